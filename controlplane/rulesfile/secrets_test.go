package rulesfile

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

const withSecrets = `
filter: {collectorCluster: c}
secrets:
  signing: {env: PARTNER_SIGNING}
  broker: {file: /run/secrets/broker}
  unused: {env: NOBODY}
rules:
  - name: reports
    nodes: {clusters: [reports]}
    mode: async
    callback: {url: "https://hooks.example/cb", secretRef: signing}
  - name: tenants
    mode: async
    callback:
      select:
        header: x-tenant
        targets:
          mq: {url: "amqps://mq.example/v?exchange=e&routingKey=k", protocol: amqp, credentialsRef: broker}
`

// TestNodeConfigCarriesSecretDeclarations: each node's configuration has the
// declarations (never values) of exactly the secrets its rules reference,
// in a form the filter accepts.
func TestNodeConfigCarriesSecretDeclarations(t *testing.T) {
	f, err := Parse("rules.yaml", []byte(withSecrets))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cluster string
		want    []string
	}{
		{"reports", []string{"broker", "signing"}},
		{"billing", []string{"broker"}},
	} {
		cfg := f.ForNode("n", tc.cluster)
		if got := slices.Sorted(maps.Keys(cfg.Secrets)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: secrets %v, want %v", tc.cluster, got, tc.want)
		}
		js, _ := json.Marshal(cfg)
		back, err := rules.Parse(js)
		if err != nil {
			t.Fatalf("the filter refuses a configuration with secrets: %v", err)
		}
		if tc.cluster == "reports" && back.Secrets["signing"] != (rules.SecretDecl{Env: "PARTNER_SIGNING"}) {
			t.Fatalf("declaration %+v", back.Secrets["signing"])
		}
	}
	if cfg := f.ForNode("n", "billing"); cfg.Secrets["broker"].File != "/run/secrets/broker" {
		t.Fatalf("file declaration %+v", cfg.Secrets["broker"])
	}
	noRefs, _ := Parse("rules.yaml", []byte("filter: {collectorCluster: c}\nsecrets: {a: {env: A}}\nrules: [{name: s, mode: sync}]\n"))
	if js, _ := json.Marshal(noRefs.ForNode("n", "c")); strings.Contains(string(js), "secrets") {
		t.Fatalf("a configuration without references carries secrets: %s", js)
	}
}

func TestLoadSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	for _, tc := range []struct {
		name, content string
		want          map[string]Secret
		err           string
	}{
		{"full.yaml", withSecrets, map[string]Secret{"signing": {Env: "PARTNER_SIGNING"}, "broker": {File: "/run/secrets/broker"}, "unused": {Env: "NOBODY"}}, ""},
		{"only.yaml", "secrets: {partner: {env: PARTNER}}\n", map[string]Secret{"partner": {Env: "PARTNER"}}, ""},
		// The rules are not decoded (a collector does not validate them),
		// so an alias bomb there costs nothing either.
		{"bomb-in-rules.yaml", "secrets: {p: {env: P}}\n" + strings.TrimPrefix(string(bomb(12, 9)), "filter: {collectorCluster: c}\n"), map[string]Secret{"p": {Env: "P"}}, ""},
		{"both.yaml", "secrets: {p: {env: P, file: /p}}\n", nil, "both.yaml:1:14: secrets.p: want exactly one of env or file"},
		{"unknown.yaml", "secret: {p: {env: P}}\n", nil, "unknown.yaml:1:1: secret: unknown key (known: filter, secrets, callers, nodes, packages, rules, sidecar)"},
		{"field.yaml", "secrets: {p: {environment: P}}\n", nil, "field.yaml:1:15: secrets.p.environment: unknown key (known: env, file)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadSecrets(write(tc.name, tc.content))
			if tc.err != "" {
				if err == nil || !strings.HasSuffix(err.Error(), tc.err) {
					t.Fatalf("error %v, want …%s", err, tc.err)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("LoadSecrets = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
