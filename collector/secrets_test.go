package collector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// TestSecretSourceResolution: the declared source wins; the
// ASYNCMESH_SECRET_<REF> and -secrets-dir fallbacks apply to what is not
// declared or whose declared source is absent; a missing secret names the
// reference and every source tried; no error carries a value.
func TestSecretSourceResolution(t *testing.T) {
	dir := t.TempDir()
	secretsDir := filepath.Join(dir, "secrets.d")
	os.Mkdir(secretsDir, 0o700)
	write := func(path, v string) string {
		if err := os.WriteFile(path, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	declaredFile := write(filepath.Join(dir, "partner"), "  from-declared-file\n")
	write(filepath.Join(secretsDir, "partner"), "from-secrets-dir")
	write(filepath.Join(secretsDir, "undeclared"), "from-secrets-dir")
	write(filepath.Join(dir, "empty"), " \n")
	write(filepath.Join(dir, "huge"), strings.Repeat("x", MaxSecretSize+1))

	t.Setenv("TEST_DECLARED_ENV", "from-declared-env")
	t.Setenv("ASYNCMESH_SECRET_PARTNER", "from-fallback-env")
	os.Unsetenv("TEST_UNSET_ENV")
	os.Unsetenv("ASYNCMESH_SECRET_GHOST")

	tests := []struct {
		name   string
		decls  []Declarations
		dir    string
		ref    string
		want   string
		errHas []string
	}{
		{"declared env wins over the fallbacks", decl("partner", rules.SecretDecl{Env: "TEST_DECLARED_ENV"}), secretsDir, "partner", "from-declared-env", nil},
		{"declared file wins over the fallbacks", decl("partner", rules.SecretDecl{File: declaredFile}), secretsDir, "partner", "from-declared-file", nil},
		{"first declaration wins", append(decl("partner", rules.SecretDecl{File: declaredFile}), decl("partner", rules.SecretDecl{Env: "TEST_DECLARED_ENV"})...), "", "partner", "from-declared-file", nil},
		{"declared env absent: fallback env", decl("partner", rules.SecretDecl{Env: "TEST_UNSET_ENV"}), "", "partner", "from-fallback-env", nil},
		{"declared file absent: fallback env", decl("partner", rules.SecretDecl{File: filepath.Join(dir, "nope")}), "", "partner", "from-fallback-env", nil},
		{"undeclared: fallback env", decl("other", rules.SecretDecl{Env: "TEST_DECLARED_ENV"}), secretsDir, "partner", "from-fallback-env", nil},
		{"undeclared: fallback dir", nil, secretsDir, "undeclared", "from-secrets-dir", nil},
		{"missing everywhere", decl("ghost", rules.SecretDecl{Env: "TEST_UNSET_ENV"}), secretsDir, "ghost", "", []string{
			`secret "ghost" not found`, "environment variable TEST_UNSET_ENV (declared under secrets:) is not set",
			"environment variable ASYNCMESH_SECRET_GHOST is not set", "there is no file " + filepath.Join(secretsDir, "ghost")}},
		{"missing declared file", decl("ghost", rules.SecretDecl{File: filepath.Join(dir, "nope")}), "", "ghost", "", []string{
			`secret "ghost" not found`, "file " + filepath.Join(dir, "nope") + " (declared under secrets:) does not exist", "ASYNCMESH_SECRET_GHOST"}},
		{"declared file unreadable", decl("partner", rules.SecretDecl{File: secretsDir}), "", "partner", "", []string{
			`secret "partner": file ` + secretsDir + ", as declared under secrets:"}},
		{"declared file too large", decl("partner", rules.SecretDecl{File: filepath.Join(dir, "huge")}), "", "partner", "", []string{"larger than 65536 bytes"}},
		{"declared file empty", decl("partner", rules.SecretDecl{File: filepath.Join(dir, "empty")}), "", "partner", "", []string{`secret "partner": file ` + filepath.Join(dir, "empty") + " is empty"}},
		{"declared relative file", decl("partner", rules.SecretDecl{File: "partner"}), "", "partner", "", []string{"not an absolute path"}},
		{"bad declaration", decl("partner", rules.SecretDecl{Env: "A", File: "/b"}), "", "partner", "", []string{"want exactly one of env or file"}},
		{"not a plain name", nil, secretsDir, "../partner", "", []string{"is not a plain name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SecretSource{Declared: tt.decls, Dir: tt.dir}.Value(tt.ref)
			if tt.errHas == nil {
				if err != nil || got != tt.want {
					t.Fatalf("Value(%q) = %q, %v; want %q", tt.ref, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Value(%q) = %q, want an error", tt.ref, got)
			}
			for _, s := range tt.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "from-") || strings.Contains(err.Error(), "xxxx") {
				t.Errorf("error reveals a value: %v", err)
			}
		})
	}
}

func decl(name string, d rules.SecretDecl) []Declarations {
	return []Declarations{StaticDeclarations{name: d}}
}

// TestDeclaredFileRotates: a declared file is read at each use, so a
// rotated secret (two during the overlap) signs the next callback without
// a restart.
func TestDeclaredFileRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing")
	oldS, newS := webhook.NewSecret(), webhook.NewSecret()
	os.WriteFile(path, []byte(oldS+"\n"), 0o600)
	src := SecretSource{Declared: decl("signing", rules.SecretDecl{File: path})}
	if got, err := src.Lookup("signing"); err != nil || len(got) != 1 {
		t.Fatalf("Lookup = %v, %v", got, err)
	}
	os.WriteFile(path+".new", []byte(newS+"\n"+oldS+"\n"), 0o600)
	os.Rename(path+".new", path)
	got, err := src.Lookup("signing")
	if err != nil || len(got) != 2 {
		t.Fatalf("after rotation Lookup = %v, %v; want both secrets", got, err)
	}
	want, _ := webhook.ParseSecret(newS)
	if string(got[0]) != string(want) {
		t.Fatal("the new secret is not the first")
	}
}
