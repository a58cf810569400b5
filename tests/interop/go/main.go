// Command interop drives Insignia's agent and SDK with Go SPIFFE clients we did not write.
//
// Each subcommand does one thing against the Workload API named by SPIFFE_ENDPOINT_SOCKET and
// prints ONE JSON line on stdout (streaming commands print one line per event, the last one
// being the result). On failure it prints one line "interop <command>: <error>" on stderr
// and exits 1. New cases are new entries in `commands`.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

type command struct {
	usage string
	run   func(ctx context.Context, args []string) (any, error)
}

var commands = map[string]command{
	"x509":         {"x509", runX509},
	"jwt":          {"jwt AUDIENCE [AUDIENCE...]", runJWT},
	"watch-x509":   {"watch-x509 TIMEOUT_SECONDS", runWatchX509},
	"mtls-server":  {"mtls-server id|member-of VALUE", runMTLSServer},
	"mtls-client":  {"mtls-client HOST:PORT id|member-of VALUE", runMTLSClient},
	"raw":          {"raw x509|jwt [--no-header] [AUDIENCE...]", runRaw},
	"fetch-bundle": {"fetch-bundle TRUST_DOMAIN URL web CA_PEM | spiffe BUNDLE_PEM ENDPOINT_ID", runFetchBundle},
	"dial-domain":  {"dial-domain HOST:PORT TRUST_DOMAIN DIR PEER_TRUST_DOMAIN PEER_BUNDLE_PEM", runDialDomain},
	"serve-domain": {"serve-domain TRUST_DOMAIN DIR PEER_TRUST_DOMAIN PEER_BUNDLE_PEM", runServeDomain},
	"sds-fetch":    {"sds-fetch [NAME...]", runSDSFetch},
	"sds-protocol": {"sds-protocol sotw|delta UNKNOWN_NAME QUIET_SECONDS", runSDSProtocol},
	"sds-follow":   {"sds-follow sotw|delta SECONDS NAME [NAME...]", runSDSFollow},
}

// emit writes one JSON line on stdout.
func emit(value any) {
	line, err := json.Marshal(value)
	if err != nil {
		fail("emit", err)
	}
	fmt.Println(string(line))
}

func fail(name string, err error) {
	fmt.Fprintf(os.Stderr, "interop %s: %s\n", name, strings.ReplaceAll(err.Error(), "\n", " "))
	os.Exit(1)
}

func usage() string {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, commands[name].usage)
	}
	sort.Strings(names)
	return "usage: interop " + strings.Join(names, " | interop ")
}

func main() {
	if len(os.Args) < 2 {
		fail("", fmt.Errorf("no command; %s", usage()))
	}
	name := os.Args[1]
	cmd, ok := commands[name]
	if !ok {
		fail(name, fmt.Errorf("unknown command %q; %s", name, usage()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	result, err := cmd.run(ctx, os.Args[2:])
	if err != nil {
		fail(name, err)
	}
	emit(result)
}
