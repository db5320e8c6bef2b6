//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/asyncmesh/asyncmesh/deploy/images"
	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestFilterFromImage runs Envoy on the filter as a mesh gets it: the
// filter image that make images writes (built here by the same code from
// the same asyncmesh.wasm), read back from its OCI layout as a registry
// client reads it (index → manifest → the one layer → plugin.wasm), with
// nothing else of build/ in the way; the async lifecycle works through it
// (the Wasm VM takes the request in and lets its replay through).
func TestFilterFromImage(t *testing.T) {
	bin := os.Getenv("ASYNCMESH_BIN")
	wasm, err := os.ReadFile(filepath.Join(bin, "asyncmesh.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := images.Filter(wasm, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := images.Write(dir, "filter", "asyncmesh/filter:e2e", img); err != nil {
		t.Fatal(err)
	}
	plugin := pluginFromLayout(t, filepath.Join(dir, "filter"))

	// A bin directory whose asyncmesh.wasm is the extracted plugin.wasm and
	// whose programs are build/'s.
	own := t.TempDir()
	entries, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "asyncmesh.wasm" || e.IsDir() {
			continue
		}
		if err := os.Symlink(filepath.Join(bin, e.Name()), filepath.Join(own, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(own, "asyncmesh.wasm"), plugin, 0o644); err != nil {
		t.Fatal(err)
	}

	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: own,
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), ControlPlane: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	resp, body := doAt(t, s, "POST", "/slow?ms=10", `{"order":7}`, "content-type", "application/json")
	id, traceID := accepted(t, resp, body)
	rec, cb := waitCallbackAt(t, s, id)
	if !rec.Verified || cb.TraceID != traceID || cb.Status != "completed" || cb.Response.Status != 200 {
		t.Fatalf("callback %+v %+v", rec, cb)
	}
}

// pluginFromLayout reads an OCI image layout's one image and returns the
// plugin.wasm of its one layer, as Istio's and Envoy Gateway's fetchers do
// with the compat variant.
func pluginFromLayout(t *testing.T, dir string) []byte {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("the layout holds %d manifests, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(ls), err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("no %s in the filter image's layer", images.PluginFile)
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "./") == images.PluginFile {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}
