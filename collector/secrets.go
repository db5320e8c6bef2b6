package collector

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Declarations say where declared secrets are: the secrets: section of the
// rules file, name → an environment variable or a file of this collector.
// collector/xdsrules gives the ones the control plane sends with the rules
// (live), StaticDeclarations the ones read from a file (collector -rules).
type Declarations interface {
	SecretDecl(name string) (rules.SecretDecl, bool)
}

// StaticDeclarations are declarations read once.
type StaticDeclarations map[string]rules.SecretDecl

// SecretDecl implements Declarations.
func (s StaticDeclarations) SecretDecl(name string) (rules.SecretDecl, bool) {
	d, ok := s[name]
	return d, ok
}

// MaxSecretSize bounds a secret's file: a few signing secrets, a key or a
// "user:password" is far less, and a wrong path (a log file, a device) must
// not be read whole on every callback.
const MaxSecretSize = 64 << 10

// SecretSource resolves a secret reference. Its declared source wins: the
// first of Declared that declares the name says which environment variable
// or file holds it. When the declared source is absent, or the name is not
// declared, the fallbacks are tried in order: the environment variable
// ASYNCMESH_SECRET_<REF> (upper case, '-' and '.' as '_'), then the file
// <Dir>/<ref>. A missing secret is an error naming the reference and every
// source tried.
//
// Files are read at each use, so that a rotated file (a Kubernetes secret
// volume, a vault agent) applies to the next callback without a restart. A
// value may hold several whsec_ secrets, one per line or space-separated,
// to sign with all of them during a rotation. Values are never logged nor
// put in errors.
type SecretSource struct {
	Declared []Declarations
	Dir      string
}

// FallbackEnv is the environment variable a reference falls back to.
func FallbackEnv(ref string) string {
	return "ASYNCMESH_SECRET_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(ref))
}

// Value implements delivery.Secrets: the secret's value, trimmed.
func (s SecretSource) Value(ref string) (string, error) {
	if ref == "" || strings.ContainsAny(ref, `/\`) || strings.HasPrefix(ref, ".") {
		return "", fmt.Errorf("secret reference %q is not a plain name", ref)
	}
	var tried []string
	for _, d := range s.Declared {
		if d == nil {
			continue
		}
		decl, ok := d.SecretDecl(ref)
		if !ok {
			continue
		}
		raw, where, found, err := declared(decl)
		if err != nil {
			return "", fmt.Errorf("secret %q: %s, as declared under secrets: %w", ref, where, err)
		}
		if found {
			return clean(ref, raw, where)
		}
		absent := "is not set"
		if decl.File != "" {
			absent = "does not exist"
		}
		tried = append(tried, where+" (declared under secrets:) "+absent)
		break // the first declaration is the one
	}
	env := FallbackEnv(ref)
	if raw, ok := os.LookupEnv(env); ok {
		return clean(ref, raw, "environment variable "+env)
	}
	tried = append(tried, "environment variable "+env+" is not set")
	if s.Dir != "" {
		path := filepath.Join(s.Dir, ref)
		raw, found, err := readSecretFile(path)
		if err != nil {
			return "", fmt.Errorf("secret %q: file %s: %w", ref, path, err)
		}
		if found {
			return clean(ref, raw, "file "+path)
		}
		tried = append(tried, "there is no file "+path)
	}
	return "", fmt.Errorf("secret %q not found: %s", ref, strings.Join(tried, "; "))
}

// declared reads a declared source: its value, a description of it for
// messages, and whether it exists.
func declared(d rules.SecretDecl) (raw, where string, found bool, err error) {
	switch {
	case d.Env != "" && d.File == "":
		raw, found = os.LookupEnv(d.Env)
		return raw, "environment variable " + d.Env, found, nil
	case d.File != "" && d.Env == "":
		where = "file " + d.File
		if !filepath.IsAbs(d.File) {
			return "", where, false, errors.New("not an absolute path")
		}
		raw, found, err = readSecretFile(d.File)
		return raw, where, found, err
	}
	return "", "a declaration with both or neither of env and file", false, errors.New("want exactly one of env or file")
}

// readSecretFile reads a secret's file, at most MaxSecretSize bytes; a
// missing file is not found, not an error.
func readSecretFile(path string) (string, bool, error) {
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, MaxSecretSize+1))
	if err != nil {
		return "", false, err
	}
	if len(b) > MaxSecretSize {
		return "", false, fmt.Errorf("larger than %d bytes", MaxSecretSize)
	}
	return string(b), true, nil
}

func clean(ref, raw, where string) (string, error) {
	if raw = strings.TrimSpace(raw); raw == "" {
		return "", fmt.Errorf("secret %q: %s is empty", ref, where)
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
