package xdsrules

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

const secretsYAML = `
filter: {collectorCluster: c}
secrets:
  partner: {env: ASYNCMESH_TEST_PARTNER_SIGNING}
  other: {file: /run/secrets/other}
rules:
  - name: report
    match: {pathPrefix: /slow}
    mode: async
    callback: {url: "https://hooks.partner.example/cb", secretRef: partner}
  - name: billing-only
    nodes: {clusters: [billing]}
    mode: async
    callback: {url: "https://billing.example/cb", secretRef: other}
`

// TestDeclaredSecretResolvesThroughControlPlane: a rule's secretRef declared
// as {env: SOME_VAR} in the rules file resolves in a collector following the
// control plane, through the declarations that come with its rules, and not
// through ASYNCMESH_SECRET_<REF> (unset here). Before, the declaration never
// reached the collector and every callback of the rule failed with "secret
// not found". A change of the declaration applies live.
func TestDeclaredSecretResolvesThroughControlPlane(t *testing.T) {
	signing := webhook.NewSecret()
	t.Setenv("ASYNCMESH_TEST_PARTNER_SIGNING", signing)
	os.Unsetenv("ASYNCMESH_SECRET_PARTNER")
	path := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte(secretsYAML), 0o644)
	addr, stop := controlPlane(t, path, "127.0.0.1:0")
	defer stop()

	r := New(Config{Address: addr, NodeID: "sidecar-1", Cluster: "reports", Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	defer func() { cancel(); <-runDone }()
	waitFor(t, r, "first rules", func() bool { return r.Version() != "" })

	src := collector.SecretSource{Declared: []collector.Declarations{r}}
	got, err := src.Lookup("partner")
	if err != nil {
		t.Fatalf("the declared secret does not resolve: %v", err)
	}
	want, _ := webhook.ParseSecret(signing)
	if len(got) != 1 || string(got[0]) != string(want) {
		t.Fatal("resolved to another secret")
	}
	// Only the declarations of this node's rules come: billing-only's
	// secret is another node's business.
	if _, ok := r.SecretDecl("other"); ok {
		t.Fatal("got the declaration of a secret only another cluster's rule uses")
	}

	// The declaration moves to another variable: followed live.
	t.Setenv("ASYNCMESH_TEST_PARTNER_SIGNING_V2", "whsec_"+strings.Repeat("QUJD", 8))
	os.WriteFile(path+".new", []byte(strings.Replace(secretsYAML, "ASYNCMESH_TEST_PARTNER_SIGNING}", "ASYNCMESH_TEST_PARTNER_SIGNING_V2}", 1)), 0o644)
	os.Rename(path+".new", path)
	waitFor(t, r, "new declaration", func() bool {
		d, _ := r.SecretDecl("partner")
		return d.Env == "ASYNCMESH_TEST_PARTNER_SIGNING_V2"
	})
	if v, err := src.Value("partner"); err != nil || v != "whsec_"+strings.Repeat("QUJD", 8) {
		t.Fatalf("after the change: %v", err)
	}
}
