package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// issuerKeyID is the hex Authority Key Identifier of a leaf: which CA signed it.
func issuerKeyID(leaf *x509.Certificate) string {
	return hex.EncodeToString(leaf.AuthorityKeyId)
}

type svidView struct {
	SpiffeID  string `json:"spiffe_id"`
	Serial    string `json:"serial"`
	IssuerKey string `json:"issuer_key_id"`
	ChainLen  int    `json:"chain_len"`
}

func describeSVID(svid *x509svid.SVID) svidView {
	leaf := svid.Certificates[0]
	return svidView{svid.ID.String(), leaf.SerialNumber.String(), issuerKeyID(leaf), len(svid.Certificates)}
}

// runX509 exercises FetchX509Context, FetchX509SVIDs and FetchX509Bundles, and verifies
// the default SVID with x509svid.Verify against the fetched bundles.
func runX509(ctx context.Context, args []string) (any, error) {
	if len(args) != 0 {
		return nil, errors.New("x509 takes no arguments")
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
	svids, err := client.FetchX509SVIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509SVIDs: %w", err)
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509Bundles: %w", err)
	}
	context := []svidView{}
	for _, svid := range x509ctx.SVIDs {
		context = append(context, describeSVID(svid))
	}
	listed := []string{}
	for _, svid := range svids {
		listed = append(listed, svid.ID.String())
	}
	domains := []string{}
	authorities := 0
	for _, bundle := range bundles.Bundles() {
		domains = append(domains, bundle.TrustDomain().String())
		authorities += len(bundle.X509Authorities())
	}
	sort.Strings(domains)
	verified, chains, err := x509svid.Verify(x509ctx.DefaultSVID().Certificates, bundles)
	if err != nil {
		return nil, fmt.Errorf("x509svid.Verify of the default SVID: %w", err)
	}
	return map[string]any{
		"context_svids":       context,
		"svids":               listed,
		"bundle_domains":      domains,
		"bundle_authorities":  authorities,
		"verified_id":         verified.String(),
		"verified_chain_len":  len(chains[0]),
		"context_bundle_size": x509ctx.Bundles.Len(),
	}, nil
}

// runJWT fetches a JWT-SVID for the audiences, checks it with jwtsvid.ParseAndValidate
// against FetchJWTBundles and with the agent's ValidateJWTSVID, and reports how both
// judge the same token for an audience it was not issued to.
func runJWT(ctx context.Context, args []string) (any, error) {
	if len(args) == 0 {
		return nil, errors.New("jwt needs at least one AUDIENCE")
	}
	client, err := workloadapi.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("workload API client: %w", err)
	}
	defer client.Close()
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: args[0], ExtraAudiences: args[1:]})
	if err != nil {
		return nil, fmt.Errorf("FetchJWTSVID: %w", err)
	}
	token := svid.Marshal()
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchJWTBundles: %w", err)
	}
	parsed, err := jwtsvid.ParseAndValidate(token, bundles, args)
	if err != nil {
		return nil, fmt.Errorf("jwtsvid.ParseAndValidate: %w", err)
	}
	agentSays, err := client.ValidateJWTSVID(ctx, token, args[len(args)-1])
	if err != nil {
		return nil, fmt.Errorf("ValidateJWTSVID: %w", err)
	}
	header, err := joseHeader(token)
	if err != nil {
		return nil, err
	}
	bundle, err := bundles.GetJWTBundleForTrustDomain(parsed.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("JWT bundle of %s: %w", parsed.ID.TrustDomain(), err)
	}
	_, keyKnown := bundle.FindJWTAuthority(header.KeyID)
	const other = "not-an-audience-of-this-token"
	_, localErr := jwtsvid.ParseAndValidate(token, bundles, []string{other})
	_, agentErr := client.ValidateJWTSVID(ctx, token, other)
	return map[string]any{
		"spiffe_id":             svid.ID.String(),
		"audience":              svid.Audience,
		"validated_id":          parsed.ID.String(),
		"validated_audience":    parsed.Audience,
		"agent_validated_id":    agentSays.ID.String(),
		"agent_validated_aud":   agentSays.Audience,
		"alg":                   header.Algorithm,
		"kid_in_bundle":         keyKnown,
		"expires_in_seconds":    int(time.Until(parsed.Expiry).Seconds()),
		"other_audience_error":  errorText(localErr),
		"agent_other_aud_error": errorText(agentErr),
	}, nil
}

// joseHeader decodes the token's protected header with go-jose, independently of jwtsvid.
func joseHeader(token string) (jose.Header, error) {
	algs := []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.PS256, jose.EdDSA}
	object, err := jose.ParseSigned(token, algs)
	if err != nil {
		return jose.Header{}, fmt.Errorf("go-jose ParseSigned: %w", err)
	}
	return object.Signatures[0].Protected, nil
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w watcher) OnX509ContextWatchError(err error)              { w.errs <- err }

// runWatchX509 follows WatchX509Context: it prints each update as it arrives and returns
// once the default SVID comes from a different CA than the first one (a re-signed SVID).
func runWatchX509(ctx context.Context, args []string) (any, error) {
	if len(args) != 1 {
		return nil, errors.New("watch-x509 needs TIMEOUT_SECONDS")
	}
	seconds, err := strconv.ParseFloat(args[0], 64)
	if err != nil || seconds <= 0 {
		return nil, fmt.Errorf("TIMEOUT_SECONDS %q: expected a positive number", args[0])
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds*float64(time.Second)))
	defer cancel()
	client, err := workloadapi.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("workload API client: %w", err)
	}
	defer client.Close()
	w := watcher{make(chan *workloadapi.X509Context, 16), make(chan error, 16)}
	go func() { _ = client.WatchX509Context(ctx, w) }()
	var seen []svidView
	watchErrors := []string{}
	for {
		select {
		case update := <-w.updates:
			view := describeSVID(update.DefaultSVID())
			emit(map[string]any{"update": view})
			seen = append(seen, view)
			if view.IssuerKey != seen[0].IssuerKey {
				return map[string]any{"first": seen[0], "resigned": view, "updates": len(seen), "watch_errors": watchErrors}, nil
			}
		case err := <-w.errs:
			watchErrors = append(watchErrors, err.Error())
		case <-ctx.Done():
			return nil, fmt.Errorf("no SVID from another CA within %s after %d updates (watch errors: %v)", args[0], len(seen), watchErrors)
		}
	}
}
