package collector

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// SecretSource resolves a secret reference: first from the environment variable
// ASYNCMESH_SECRET_<REF> (upper case, '-' and '.' as '_'), then from the file
// <Dir>/<ref>. A value may hold several whsec_ secrets, one per line or
// space-separated, to sign with all of them during a rotation. Values are
// never logged.
type SecretSource struct {
	Dir string
}

// Value implements delivery.Secrets: the secret's value, trimmed.
func (s SecretSource) Value(ref string) (string, error) {
	if ref == "" || strings.ContainsAny(ref, `/\`) || strings.HasPrefix(ref, ".") {
		return "", fmt.Errorf("secret reference %q is not a plain name", ref)
	}
	env := "ASYNCMESH_SECRET_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(ref))
	raw, ok := os.LookupEnv(env)
	if !ok && s.Dir != "" {
		b, err := os.ReadFile(filepath.Join(s.Dir, ref))
		if err == nil {
			raw, ok = string(b), true
		}
	}
	if !ok {
		return "", fmt.Errorf("secret %q not found (set %s or put a file named %s in the secrets directory)", ref, env, ref)
	}
	if raw = strings.TrimSpace(raw); raw == "" {
		return "", fmt.Errorf("secret %q is empty", ref)
	}
	return raw, nil
}

// Lookup implements delivery.Secrets: the whsec_ signing secrets of ref.
func (s SecretSource) Lookup(ref string) ([]webhook.Secret, error) {
	raw, err := s.Value(ref)
	if err != nil {
		return nil, err
	}
	var out []webhook.Secret
	for _, f := range strings.Fields(raw) {
		sec, err := webhook.ParseSecret(f)
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", ref, err)
		}
		out = append(out, sec)
	}
	return out, nil
}
