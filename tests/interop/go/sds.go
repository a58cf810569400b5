package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// The SDS resource type, as Envoy sends it in every request.
const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// secretView is what one SDS secret holds, parsed with Go's crypto and checked against the
// proto constraints of go-control-plane's generated validators (ValidateAll).
type secretView struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Version  string `json:"version,omitempty"`
	SpiffeID string `json:"spiffe_id,omitempty"`
	Serial   string `json:"serial,omitempty"`
	Issuer   string `json:"issuer_key_id,omitempty"`
	ChainLen int    `json:"chain_len,omitempty"`
	KeyMatch bool   `json:"key_matches_leaf"`
	CACount  int    `json:"ca_count,omitempty"`
	// The custom validator of a validation context: its name, typed config and domains.
	Validator        string         `json:"validator,omitempty"`
	ValidatorType    string         `json:"validator_type,omitempty"`
	ValidatorDomains map[string]int `json:"validator_domains,omitempty"`
	leafDER          []byte
	keyDER           []byte
	caDER            [][]byte
}

func pemCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, nil
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
}

func describeSecret(packed *anypb.Any, version string) (secretView, error) {
	secret := &tls.Secret{}
	if packed.GetTypeUrl() != secretType {
		return secretView{}, fmt.Errorf("resource type %q, not %q", packed.GetTypeUrl(), secretType)
	}
	if err := packed.UnmarshalTo(secret); err != nil {
		return secretView{}, err
	}
	if err := secret.ValidateAll(); err != nil {
		return secretView{}, fmt.Errorf("secret %q fails Envoy's proto constraints: %w", secret.GetName(), err)
	}
	view := secretView{Name: secret.GetName(), Version: version}
	switch {
	case secret.GetTlsCertificate() != nil:
		view.Kind = "tls_certificate"
		cert := secret.GetTlsCertificate()
		chain, err := pemCerts(cert.GetCertificateChain().GetInlineBytes())
		if err != nil || len(chain) == 0 {
			return view, fmt.Errorf("secret %q: certificate chain: %v", view.Name, err)
		}
		leaf := chain[0]
		if len(leaf.URIs) != 1 {
			return view, fmt.Errorf("secret %q: leaf has %d URI SANs", view.Name, len(leaf.URIs))
		}
		view.SpiffeID, view.Serial, view.Issuer = leaf.URIs[0].String(), leaf.SerialNumber.String(), issuerKeyID(leaf)
		view.ChainLen, view.leafDER = len(chain), leaf.Raw
		block, _ := pem.Decode(cert.GetPrivateKey().GetInlineBytes())
		if block == nil {
			return view, fmt.Errorf("secret %q: no PEM private key", view.Name)
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return view, fmt.Errorf("secret %q: private key: %w", view.Name, err)
		}
		signer, ok := key.(crypto.Signer)
		view.KeyMatch = ok && publicKeyEqual(signer.Public(), leaf.PublicKey)
		view.keyDER = block.Bytes
	case secret.GetValidationContext() != nil:
		view.Kind = "validation_context"
		vc := secret.GetValidationContext()
		cas, err := pemCerts(vc.GetTrustedCa().GetInlineBytes())
		if err != nil {
			return view, fmt.Errorf("secret %q: trusted_ca: %w", view.Name, err)
		}
		view.CACount = len(cas)
		for _, ca := range cas {
			view.caDER = append(view.caDER, ca.Raw)
		}
		if custom := vc.GetCustomValidatorConfig(); custom != nil {
			view.Validator, view.ValidatorType = custom.GetName(), custom.GetTypedConfig().GetTypeUrl()
			config := &tls.SPIFFECertValidatorConfig{}
			if err := custom.GetTypedConfig().UnmarshalTo(config); err != nil {
				return view, fmt.Errorf("secret %q: validator config: %w", view.Name, err)
			}
			if err := config.ValidateAll(); err != nil {
				return view, fmt.Errorf("secret %q: validator config fails its constraints: %w", view.Name, err)
			}
			view.ValidatorDomains = map[string]int{}
			for _, td := range config.GetTrustDomains() {
				certs, err := pemCerts(td.GetTrustBundle().GetInlineBytes())
				if err != nil {
					return view, fmt.Errorf("secret %q: bundle of %s: %w", view.Name, td.GetName(), err)
				}
				view.ValidatorDomains[td.GetName()] = len(certs)
			}
		}
	default:
		view.Kind = "other"
	}
	return view, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(x crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func sdsConn() (*grpc.ClientConn, error) {
	endpoint := os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	if !strings.HasPrefix(endpoint, "unix:///") {
		return nil, fmt.Errorf("SPIFFE_ENDPOINT_SOCKET %q: expected unix:///path", endpoint)
	}
	return grpc.NewClient("unix://"+strings.TrimPrefix(endpoint, "unix://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// runSDSFetch calls FetchSecrets for the names given and compares what it got with what
// go-spiffe's Workload API client gets: the same leaf, the same key, the same CAs.
func runSDSFetch(ctx context.Context, args []string) (any, error) {
	conn, err := sdsConn()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	response, err := secretsvc.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx,
		&discovery.DiscoveryRequest{TypeUrl: secretType, ResourceNames: args,
			Node: &core.Node{Id: "interop", Cluster: "interop"}})
	if err != nil {
		return nil, fmt.Errorf("FetchSecrets: %w", err)
	}
	secrets := []secretView{}
	for _, packed := range response.GetResources() {
		view, err := describeSecret(packed, "")
		if err != nil {
			return nil, err
		}
		secrets = append(secrets, view)
	}
	client, err := workloadapi.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("workload API client: %w", err)
	}
	defer client.Close()
	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509Context: %w", err)
	}
	// Per secret: the Workload API SVID whose leaf and key are byte-identical, or the trust
	// domain whose Workload API bundle holds exactly its CAs.
	sameAs := map[string]string{}
	for _, view := range secrets {
		for _, svid := range x509ctx.SVIDs {
			key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
			if err == nil && bytes.Equal(svid.Certificates[0].Raw, view.leafDER) && bytes.Equal(key, view.keyDER) {
				sameAs[view.Name] = svid.ID.String()
				break
			}
		}
		for _, bundle := range x509ctx.Bundles.Bundles() {
			authorities := bundle.X509Authorities()
			if len(view.caDER) == 0 || len(authorities) != len(view.caDER) {
				continue
			}
			same := true
			for i, ca := range authorities {
				same = same && bytes.Equal(ca.Raw, view.caDER[i])
			}
			if same {
				sameAs[view.Name] = bundle.TrustDomain().IDString()
			}
		}
	}
	return map[string]any{
		"version_info": response.GetVersionInfo(), "nonce": response.GetNonce(),
		"type_url": response.GetTypeUrl(), "secrets": secrets, "same_as_workload_api": sameAs,
	}, nil
}

// update is one response on an SDS stream, either flavour.
type update struct {
	Version string       `json:"version"`
	Nonce   string       `json:"nonce"`
	Secrets []secretView `json:"secrets"`
	Removed []string     `json:"removed,omitempty"`
}

func (u update) names() []string {
	names := []string{}
	for _, s := range u.Secrets {
		names = append(names, s.Name)
	}
	sort.Strings(names)
	return names
}

// sdsStream is StreamSecrets or DeltaSecrets driven the way Envoy drives them: subscribe
// (which also ACKs the last response), ACK, NACK with an error detail, and receive.
type sdsStream interface {
	subscribe(names ...string) error
	ack() error
	nack(detail string) error
	updates() <-chan update
	failed() <-chan error
}

type receiver struct {
	got  chan update
	errs chan error
}

func newReceiver() receiver { return receiver{make(chan update, 64), make(chan error, 1)} }

func (r receiver) updates() <-chan update { return r.got }
func (r receiver) failed() <-chan error   { return r.errs }

type sotwStream struct {
	receiver
	stream   grpc.BidiStreamingClient[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
	names    []string
	nonce    string
	version  string // the last version received
	accepted string // the last version ACKed
	last     chan [2]string
}

func (s *sotwStream) send(version string, detail *status.Status) error {
	for done := false; !done; {
		select {
		case vn := <-s.last:
			s.version, s.nonce = vn[0], vn[1]
		default:
			done = true
		}
	}
	if detail == nil {
		s.accepted = s.version
		version = s.version
	}
	return s.stream.Send(&discovery.DiscoveryRequest{
		TypeUrl: secretType, ResourceNames: s.names, VersionInfo: version,
		ResponseNonce: s.nonce, ErrorDetail: detail, Node: &core.Node{Id: "interop"},
	})
}

func (s *sotwStream) subscribe(names ...string) error {
	s.names = append(s.names, names...)
	return s.send("", nil)
}
func (s *sotwStream) ack() error { return s.send("", nil) }
func (s *sotwStream) nack(detail string) error {
	return s.send(s.accepted, &status.Status{Code: 3, Message: detail})
}

type deltaStream struct {
	receiver
	stream grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
	nonce  string
	last   chan string
}

func (d *deltaStream) send(request *discovery.DeltaDiscoveryRequest) error {
	for done := false; !done; {
		select {
		case d.nonce = <-d.last:
		default:
			done = true
		}
	}
	request.TypeUrl, request.ResponseNonce = secretType, d.nonce
	return d.stream.Send(request)
}

func (d *deltaStream) subscribe(names ...string) error {
	return d.send(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: names, Node: &core.Node{Id: "interop"}})
}
func (d *deltaStream) ack() error { return d.send(&discovery.DeltaDiscoveryRequest{}) }
func (d *deltaStream) nack(detail string) error {
	return d.send(&discovery.DeltaDiscoveryRequest{ErrorDetail: &status.Status{Code: 3, Message: detail}})
}

func openStream(ctx context.Context, conn *grpc.ClientConn, mode string) (sdsStream, error) {
	client := secretsvc.NewSecretDiscoveryServiceClient(conn)
	switch mode {
	case "sotw":
		stream, err := client.StreamSecrets(ctx)
		if err != nil {
			return nil, fmt.Errorf("StreamSecrets: %w", err)
		}
		s := &sotwStream{receiver: newReceiver(), stream: stream, last: make(chan [2]string, 64)}
		go func() {
			for {
				response, err := stream.Recv()
				if err != nil {
					s.errs <- fmt.Errorf("StreamSecrets: %w", err)
					return
				}
				u := update{Version: response.GetVersionInfo(), Nonce: response.GetNonce(), Secrets: []secretView{}}
				for _, packed := range response.GetResources() {
					view, err := describeSecret(packed, "")
					if err != nil {
						s.errs <- err
						return
					}
					u.Secrets = append(u.Secrets, view)
				}
				s.last <- [2]string{u.Version, u.Nonce}
				s.got <- u
			}
		}()
		return s, nil
	case "delta":
		stream, err := client.DeltaSecrets(ctx)
		if err != nil {
			return nil, fmt.Errorf("DeltaSecrets: %w", err)
		}
		d := &deltaStream{receiver: newReceiver(), stream: stream, last: make(chan string, 64)}
		go func() {
			for {
				response, err := stream.Recv()
				if err != nil {
					d.errs <- fmt.Errorf("DeltaSecrets: %w", err)
					return
				}
				u := update{Version: response.GetSystemVersionInfo(), Nonce: response.GetNonce(),
					Removed: response.GetRemovedResources(), Secrets: []secretView{}}
				for _, resource := range response.GetResources() {
					view, err := describeSecret(resource.GetResource(), resource.GetVersion())
					if err != nil {
						d.errs <- err
						return
					}
					u.Secrets = append(u.Secrets, view)
				}
				d.last <- u.Nonce
				d.got <- u
			}
		}()
		return d, nil
	}
	return nil, fmt.Errorf("mode %q: expected sotw or delta", mode)
}

// next waits for the next response, up to `wait`.
func next(s sdsStream, wait time.Duration) (update, error) {
	select {
	case u := <-s.updates():
		return u, nil
	case err := <-s.failed():
		return update{}, err
	case <-time.After(wait):
		return update{}, fmt.Errorf("no response within %s", wait)
	}
}

// quiet counts the responses that arrive within `window`: after an ACK or a NACK of the
// same secrets, the agent must send none (a re-push storm would show here).
func quiet(s sdsStream, window time.Duration) (int, error) {
	count := 0
	deadline := time.After(window)
	for {
		select {
		case <-s.updates():
			count++
		case err := <-s.failed():
			return count, err
		case <-deadline:
			return count, nil
		}
	}
}

// runSDSProtocol walks one stream through the xDS cases: a name the caller has no secret
// for, the defaults, an ACK, a NACK, and a later subscription on the same stream.
func runSDSProtocol(ctx context.Context, args []string) (any, error) {
	if len(args) != 3 {
		return nil, errors.New("sds-protocol needs sotw|delta UNKNOWN_NAME QUIET_SECONDS")
	}
	window, err := strconv.ParseFloat(args[2], 64)
	if err != nil {
		return nil, fmt.Errorf("QUIET_SECONDS %q: %w", args[2], err)
	}
	quietFor := time.Duration(window * float64(time.Second))
	conn, err := sdsConn()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	s, err := openStream(ctx, conn, args[0])
	if err != nil {
		return nil, err
	}
	const wait = 60 * time.Second
	result := map[string]any{}
	if err := s.subscribe(args[1]); err != nil {
		return nil, err
	}
	unknown, err := next(s, wait)
	if err != nil {
		return nil, fmt.Errorf("answer for %s: %w", args[1], err)
	}
	result["unknown"] = unknown
	if err := s.subscribe("default", "ALL"); err != nil {
		return nil, err
	}
	defaults, err := next(s, wait)
	if err != nil {
		return nil, fmt.Errorf("answer for default and ALL: %w", err)
	}
	result["defaults"] = defaults
	if err := s.ack(); err != nil {
		return nil, err
	}
	if result["after_ack"], err = quiet(s, quietFor); err != nil {
		return nil, err
	}
	if err := s.nack("interop: secret rejected on purpose"); err != nil {
		return nil, err
	}
	if result["after_nack"], err = quiet(s, quietFor); err != nil {
		return nil, err
	}
	if err := s.subscribe("ROOTCA"); err != nil {
		return nil, err
	}
	later, err := next(s, wait)
	if err != nil {
		return nil, fmt.Errorf("answer for ROOTCA after the NACK: %w", err)
	}
	result["later"] = later
	result["later_names"] = later.names()
	return result, nil
}

// runSDSFollow subscribes to NAMES and prints every response as one JSON line (ACKing
// each), until the stream fails or SECONDS pass: the test changes things meanwhile.
func runSDSFollow(ctx context.Context, args []string) (any, error) {
	if len(args) < 3 {
		return nil, errors.New("sds-follow needs sotw|delta SECONDS NAME [NAME...]")
	}
	seconds, err := strconv.Atoi(args[1])
	if err != nil {
		return nil, fmt.Errorf("SECONDS %q: %w", args[1], err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second)
	defer cancel()
	conn, err := sdsConn()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	s, err := openStream(ctx, conn, args[0])
	if err != nil {
		return nil, err
	}
	if err := s.subscribe(args[2:]...); err != nil {
		return nil, err
	}
	count := 0
	for {
		select {
		case u := <-s.updates():
			count++
			emit(map[string]any{"update": u, "names": u.names()})
			if err := s.ack(); err != nil {
				return nil, err
			}
		case err := <-s.failed():
			if ctx.Err() != nil {
				return map[string]any{"done": true, "updates": count}, nil
			}
			return nil, err
		}
	}
}
