package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// runRaw calls the Workload API with plain grpc-go and go-spiffe's generated stubs only (no
// go-spiffe client logic), optionally without the workload.spiffe.io header, and reports
// the gRPC status. The status is the result: a refusal is not a failure of this command.
func runRaw(ctx context.Context, args []string) (any, error) {
	if len(args) == 0 || (args[0] != "x509" && args[0] != "jwt") {
		return nil, errors.New("raw needs x509|jwt [--no-header] [AUDIENCE...]")
	}
	method, rest := args[0], args[1:]
	header := true
	if len(rest) > 0 && rest[0] == "--no-header" {
		header, rest = false, rest[1:]
	}
	endpoint := os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	if !strings.HasPrefix(endpoint, "unix:///") {
		return nil, fmt.Errorf("SPIFFE_ENDPOINT_SOCKET %q: expected unix:///path", endpoint)
	}
	conn, err := grpc.NewClient("unix://"+strings.TrimPrefix(endpoint, "unix://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("grpc.NewClient %s: %w", endpoint, err)
	}
	defer conn.Close()
	if header {
		ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	}
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	var callErr error
	got := ""
	switch method {
	case "x509":
		stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			var response *workload.X509SVIDResponse
			response, callErr = stream.Recv()
			if callErr == nil {
				got = response.Svids[0].SpiffeId
			}
		} else {
			callErr = err
		}
	case "jwt":
		var response *workload.JWTSVIDResponse
		response, callErr = client.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: rest})
		if callErr == nil {
			got = response.Svids[0].SpiffeId
		}
	}
	st, _ := status.FromError(callErr)
	return map[string]any{"code": st.Code().String(), "message": st.Message(), "spiffe_id": got}, nil
}
