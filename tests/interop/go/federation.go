package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// domainLifetime bounds a served domain: the test kills it sooner, an orphan dies anyway.
const domainLifetime = 5 * time.Minute

// runFetchBundle fetches a bundle endpoint with go-spiffe's federation.FetchBundle, over
// https_web (trusting a PEM CA file) or https_spiffe (a bootstrap bundle and the
// endpoint's SPIFFE ID), and reports what it received.
func runFetchBundle(ctx context.Context, args []string) (any, error) {
	if len(args) < 4 {
		return nil, errors.New("fetch-bundle needs TRUST_DOMAIN URL web CA_PEM | spiffe BUNDLE_PEM ENDPOINT_ID")
	}
	td, err := spiffeid.TrustDomainFromString(args[0])
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", args[0], err)
	}
	var option federation.FetchOption
	switch args[2] {
	case "web":
		data, err := os.ReadFile(args[3])
		if err != nil {
			return nil, err
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s: no PEM certificate", args[3])
		}
		option = federation.WithWebPKIRoots(roots)
	case "spiffe":
		if len(args) != 5 {
			return nil, errors.New("spiffe needs BUNDLE_PEM ENDPOINT_ID")
		}
		endpointID, err := spiffeid.FromString(args[4])
		if err != nil {
			return nil, fmt.Errorf("endpoint ID %q: %w", args[4], err)
		}
		anchors, err := x509bundle.Load(endpointID.TrustDomain(), args[3])
		if err != nil {
			return nil, err
		}
		option = federation.WithSPIFFEAuth(anchors, endpointID)
	default:
		return nil, fmt.Errorf("profile %q: expected web or spiffe", args[2])
	}
	bundle, err := federation.FetchBundle(ctx, td, args[1], option)
	if err != nil {
		return nil, err
	}
	sequence, _ := bundle.SequenceNumber()
	hint, _ := bundle.RefreshHint()
	authorities := []string{}
	for _, cert := range bundle.X509Authorities() {
		authorities = append(authorities, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})))
	}
	keyIDs := []string{}
	for kid := range bundle.JWTAuthorities() {
		keyIDs = append(keyIDs, kid)
	}
	sort.Strings(keyIDs)
	return map[string]any{
		"trust_domain":          bundle.TrustDomain().String(),
		"sequence":              sequence,
		"refresh_hint_seconds":  hint.Seconds(),
		"x509_authorities_pem":  authorities,
		"jwt_authority_key_ids": keyIDs,
	}, nil
}

// certificate signs a certificate for `uri` (a CA when parent is nil: self-signed).
func certificate(uri string, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, error) {
	id, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"go-spiffe interop"}},
		URIs:         []*url.URL{id},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if parent == nil {
		template.Subject.CommonName = "go-spiffe interop CA" // a leaf's issuer differs from its subject
		template.IsCA = true
		template.BasicConstraintsValid = true
		template.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		parent, parentKey = template, key
	} else {
		template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, key.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// mintSVID makes a key and an X509-SVID for `id`, signed by the CA.
func mintSVID(id spiffeid.ID, ca *x509.Certificate, caKey crypto.Signer) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf, err := certificate(id.String(), key, ca, caKey)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

// runServeDomain is a whole trust domain made with go-spiffe alone: a CA of its own, a
// static bundle (that CA and a JWT key) served by federation.NewHandler over https_spiffe
// with the SVID spiffe://TD/bundle-endpoint, and a spiffetls echo server as
// spiffe://TD/workload that trusts the peer domain's bundle (a PEM file) and admits its
// members. It writes DIR/bundle.pem (the bootstrap bundle for its peers) and an SVID for
// spiffe://TD/client (DIR/client.pem, DIR/client_key.pem, for dial-domain), prints
// {"bundle_port", "mtls_port"}, then one {"peer_id", "received"} line per connection.
func runServeDomain(_ context.Context, args []string) (any, error) {
	if len(args) != 4 {
		return nil, errors.New("serve-domain needs TRUST_DOMAIN DIR PEER_TRUST_DOMAIN PEER_BUNDLE_PEM")
	}
	td, err := spiffeid.TrustDomainFromString(args[0])
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", args[0], err)
	}
	peerTD, err := spiffeid.TrustDomainFromString(args[2])
	if err != nil {
		return nil, fmt.Errorf("peer trust domain %q: %w", args[2], err)
	}
	peerBundle, err := x509bundle.Load(peerTD, args[3])
	if err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca, err := certificate(td.IDString(), caKey, nil, nil)
	if err != nil {
		return nil, err
	}
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	bundle := spiffebundle.FromX509Authorities(td, []*x509.Certificate{ca})
	if err := bundle.AddJWTAuthority("go-jwt-1", jwtKey.Public()); err != nil {
		return nil, err
	}
	bundle.SetSequenceNumber(1)
	bundle.SetRefreshHint(time.Minute)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	if err := os.WriteFile(filepath.Join(args[1], "bundle.pem"), caPEM, 0o644); err != nil {
		return nil, err
	}

	endpointSVID, err := mintSVID(spiffeid.RequireFromPath(td, "/bundle-endpoint"), ca, caKey)
	if err != nil {
		return nil, err
	}
	handler, err := federation.NewHandler(td, bundle)
	if err != nil {
		return nil, err
	}
	endpoint, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.TLSServerConfig(endpointSVID))
	if err != nil {
		return nil, err
	}
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = server.Serve(endpoint) }()

	workloadSVID, err := mintSVID(spiffeid.RequireFromPath(td, "/workload"), ca, caKey)
	if err != nil {
		return nil, err
	}
	if err := writeSVID(spiffeid.RequireFromPath(td, "/client"), ca, caKey, args[1]); err != nil {
		return nil, err
	}
	trusted := x509bundle.NewSet(bundle.X509Bundle(), peerBundle)
	ctx, cancel := context.WithTimeout(context.Background(), domainLifetime)
	defer cancel()
	listener, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithRawConfig(tlsconfig.AuthorizeMemberOf(peerTD), workloadSVID, trusted))
	if err != nil {
		return nil, fmt.Errorf("spiffetls.ListenWithMode: %w", err)
	}
	defer listener.Close()
	emit(map[string]any{
		"bundle_port": endpoint.Addr().(*net.TCPAddr).Port,
		"mtls_port":   listener.Addr().(*net.TCPAddr).Port,
	})
	go func() {
		<-ctx.Done()
		listener.Close()
	}()
	for {
		conn, err := listener.Accept()
		if err != nil {
			return map[string]any{"stopped": err.Error()}, nil
		}
		line, err := echo(conn, "")
		report := map[string]any{"received": line}
		if err != nil {
			report["error"] = err.Error()
		} else if peer, err := spiffetls.PeerIDFromConn(conn); err == nil {
			report["peer_id"] = peer.String()
		}
		conn.Close()
		emit(report)
	}
}

// writeSVID mints an SVID for `id` into DIR/client.pem and DIR/client_key.pem.
func writeSVID(id spiffeid.ID, ca *x509.Certificate, caKey crypto.Signer, dir string) error {
	svid, err := mintSVID(id, ca, caKey)
	if err != nil {
		return err
	}
	certs, key, err := svid.Marshal()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "client.pem"), certs, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "client_key.pem"), key, 0o600)
}

// runDialDomain is a workload of a serve-domain trust domain dialing out: spiffetls with
// the SVID from DIR and the bundles of its own domain (DIR/bundle.pem) and the peer's,
// admitting members of the peer domain. It sends "ping" and reports the server's ID.
func runDialDomain(ctx context.Context, args []string) (any, error) {
	if len(args) != 5 {
		return nil, errors.New("dial-domain needs HOST:PORT TRUST_DOMAIN DIR PEER_TRUST_DOMAIN PEER_BUNDLE_PEM")
	}
	td, err := spiffeid.TrustDomainFromString(args[1])
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", args[1], err)
	}
	peerTD, err := spiffeid.TrustDomainFromString(args[3])
	if err != nil {
		return nil, fmt.Errorf("peer trust domain %q: %w", args[3], err)
	}
	svid, err := x509svid.Load(filepath.Join(args[2], "client.pem"), filepath.Join(args[2], "client_key.pem"))
	if err != nil {
		return nil, err
	}
	own, err := x509bundle.Load(td, filepath.Join(args[2], "bundle.pem"))
	if err != nil {
		return nil, err
	}
	peer, err := x509bundle.Load(peerTD, args[4])
	if err != nil {
		return nil, err
	}
	mode := spiffetls.MTLSClientWithRawConfig(tlsconfig.AuthorizeMemberOf(peerTD), svid, x509bundle.NewSet(own, peer))
	conn, err := spiffetls.DialWithMode(ctx, "tcp", args[0], mode)
	if err != nil {
		return nil, fmt.Errorf("spiffetls.DialWithMode %s: %w", args[0], err)
	}
	defer conn.Close()
	reply, err := echo(conn, "ping\n")
	if err != nil {
		return nil, fmt.Errorf("talking to %s: %w", args[0], err)
	}
	server, err := spiffetls.PeerIDFromConn(conn)
	if err != nil {
		return nil, fmt.Errorf("server SPIFFE ID: %w", err)
	}
	return map[string]any{"peer_id": server.String(), "reply": reply}, nil
}
