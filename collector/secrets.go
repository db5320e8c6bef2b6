package collector

import (
	"bufio"
	"bytes"
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

// Lookup implements delivery.Secrets.
func (s SecretSource) Lookup(ref string) ([]webhook.Secret, error) {
	if ref == "" || strings.ContainsAny(ref, `/\`) || strings.HasPrefix(ref, ".") {
		return nil, fmt.Errorf("secret reference %q is not a plain name", ref)
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
		return nil, fmt.Errorf("secret %q not found (set %s or put a file named %s in the secrets directory)", ref, env, ref)
	}
	var out []webhook.Secret
	sc := bufio.NewScanner(bytes.NewReader([]byte(raw)))
	sc.Split(bufio.ScanWords)
	for sc.Scan() {
		sec, err := webhook.ParseSecret(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("secret %q: %w", ref, err)
		}
		out = append(out, sec)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("secret %q is empty", ref)
	}
	return out, nil
}
