package delivery

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// authorize resolves the callback's receiver auth (rules.CallbackAuth) for
// attempt a: the Authorization value (bearer, OAuth2) or the TLS client
// certificate (mtls). Secrets are resolved at each attempt, so a rotated
// token or certificate applies to the next one.
func (s *Sender) authorize(ctx context.Context, a *attempt) error {
	auth := a.cb.Auth
	if auth == nil {
		return nil
	}
	switch auth.Type {
	case rules.CallbackAuthBearer:
		v, err := s.Secrets.Value(auth.SecretRef)
		if err != nil {
			return err
		}
		a.authorization = "Bearer " + strings.TrimSpace(v)
	case rules.CallbackAuthOAuth2:
		ts, err := s.tokenSource(auth, a.guard)
		if err != nil {
			return err
		}
		tok, err := ts.Token()
		if err != nil {
			return fmt.Errorf("oauth2 token from %s: %w", auth.TokenURL, err)
		}
		a.authorization = tok.Type() + " " + tok.AccessToken
	case rules.CallbackAuthMTLS:
		certPEM, err := s.Secrets.Value(auth.CertRef)
		if err != nil {
			return err
		}
		keyPEM, err := s.Secrets.Value(auth.KeyRef)
		if err != nil {
			return err
		}
		cert, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
		if err != nil {
			// Names the references, never the PEM.
			return fmt.Errorf("client certificate %s with key %s: %w", auth.CertRef, auth.KeyRef, err)
		}
		a.cert = &cert
	default:
		return fmt.Errorf("unknown callback auth type %q", auth.Type)
	}
	return nil
}

// certKey identifies a client certificate in connection pool keys, so that
// no connection made with one caller's certificate carries another's
// callback.
func certKey(c *tls.Certificate) string {
	if c == nil || len(c.Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(c.Certificate[0])
	return "|cert:" + hex.EncodeToString(sum[:8])
}

// tokenSource returns the cached, self-refreshing OAuth2 client-credentials
// source of auth, which reaches its token endpoint through guard (the same
// SSRF guard as the callback).
func (s *Sender) tokenSource(auth *rules.CallbackAuth, guard Guard) (oauth2.TokenSource, error) {
	secret, err := s.Secrets.Value(auth.SecretRef)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret)) // a rotated client secret gets a new source
	key := auth.TokenURL + "|" + auth.ClientID + "|" + hex.EncodeToString(sum[:]) + "|" + strings.Join(auth.Scopes, " ") + "|" + guard.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if ts, ok := s.tokens[key]; ok {
		return ts, nil
	}
	if len(s.tokens) >= maxTokenSources {
		clear(s.tokens) // bounded: sources are cheap to make again
	}
	cc := clientcredentials.Config{ClientID: auth.ClientID, ClientSecret: secret, TokenURL: auth.TokenURL, Scopes: auth.Scopes}
	ts := cc.TokenSource(context.WithValue(context.Background(), oauth2.HTTPClient, s.http.For(guard, nil)))
	if s.tokens == nil {
		s.tokens = map[string]oauth2.TokenSource{}
	}
	s.tokens[key] = ts
	return ts, nil
}

// maxTokenSources bounds the cached OAuth2 token sources.
const maxTokenSources = 1024
