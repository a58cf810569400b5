package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// authorizer builds tlsconfig.AuthorizeID or tlsconfig.AuthorizeMemberOf from the CLI.
func authorizer(kind, value string) (tlsconfig.Authorizer, error) {
	switch kind {
	case "id":
		id, err := spiffeid.FromString(value)
		if err != nil {
			return nil, fmt.Errorf("SPIFFE ID %q: %w", value, err)
		}
		return tlsconfig.AuthorizeID(id), nil
	case "member-of":
		td, err := spiffeid.TrustDomainFromString(value)
		if err != nil {
			return nil, fmt.Errorf("trust domain %q: %w", value, err)
		}
		return tlsconfig.AuthorizeMemberOf(td), nil
	}
	return nil, fmt.Errorf("authorizer %q: expected id or member-of", kind)
}

// echo reads one line, answers "hello " + line, and returns what it read. A handshake
// failure (ours or the peer's alert) surfaces here, at the first read or write.
func echo(conn net.Conn, send string) (string, error) {
	if send != "" {
		if _, err := conn.Write([]byte(send)); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	if send == "" {
		if _, err := conn.Write([]byte("hello " + line)); err != nil {
			return "", err
		}
	}
	return line, nil
}

// runMTLSServer listens with spiffetls (an X509Source on the Workload API), prints its
// port, serves one connection and reports the client's SPIFFE ID and line.
func runMTLSServer(ctx context.Context, args []string) (any, error) {
	if len(args) != 2 {
		return nil, errors.New("mtls-server needs id|member-of VALUE")
	}
	authorize, err := authorizer(args[0], args[1])
	if err != nil {
		return nil, err
	}
	listener, err := spiffetls.Listen(ctx, "tcp", "127.0.0.1:0", authorize)
	if err != nil {
		return nil, fmt.Errorf("spiffetls.Listen: %w", err)
	}
	defer listener.Close()
	emit(map[string]any{"port": listener.Addr().(*net.TCPAddr).Port})
	conn, err := listener.Accept()
	if err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	defer conn.Close()
	line, err := echo(conn, "")
	if err != nil {
		return nil, fmt.Errorf("serving the client: %w", err)
	}
	peer, err := spiffetls.PeerIDFromConn(conn)
	if err != nil {
		return nil, fmt.Errorf("client SPIFFE ID: %w", err)
	}
	return map[string]any{"peer_id": peer.String(), "received": line}, nil
}

// runMTLSClient dials with spiffetls, sends "ping\n" and reports the server's SPIFFE ID
// and reply.
func runMTLSClient(ctx context.Context, args []string) (any, error) {
	if len(args) != 3 {
		return nil, errors.New("mtls-client needs HOST:PORT id|member-of VALUE")
	}
	authorize, err := authorizer(args[1], args[2])
	if err != nil {
		return nil, err
	}
	conn, err := spiffetls.Dial(ctx, "tcp", args[0], authorize)
	if err != nil {
		return nil, fmt.Errorf("spiffetls.Dial %s: %w", args[0], err)
	}
	defer conn.Close()
	reply, err := echo(conn, "ping\n")
	if err != nil {
		return nil, fmt.Errorf("talking to %s: %w", args[0], err)
	}
	peer, err := spiffetls.PeerIDFromConn(conn)
	if err != nil {
		return nil, fmt.Errorf("server SPIFFE ID: %w", err)
	}
	return map[string]any{"peer_id": peer.String(), "reply": reply}, nil
}
