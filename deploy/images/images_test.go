package images

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Small inputs made here: a Wasm header with a custom section, an ELF header
// with a marker, a PEM-looking bundle. The images do not run them.
var (
	testWasm   = append([]byte("\x00asm\x01\x00\x00\x00\x00\x05\x04test"), bytes.Repeat([]byte{0xab}, 3000)...)
	testBinary = append([]byte("\x7fELF\x02\x01\x01"), []byte("collector test binary")...)
	testCA     = []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	testEpoch  = time.Unix(1700000000, 0).UTC()
)

// readBack writes img with Write and reads it back from the OCI layout (found
// by its ref annotation), checking the docker tarball holds the same layers.
func readBack(t *testing.T, dir, imgName, ref string, img v1.Image) v1.Image {
	t.Helper()
	if err := Write(dir, imgName, ref, img); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(dir, imgName))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[RefAnnotation] != ref {
		t.Fatalf("index.json: %+v, want one image named %s", im.Manifests, ref)
	}
	got, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("layout digest %s, built %s", d, want)
	}
	m, err := got.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Fatalf("manifest %s config %s, want OCI media types", m.MediaType, m.Config.MediaType)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Fatalf("layers %+v, want one %s", m.Layers, types.OCILayer)
	}

	tb, err := tarball.ImageFromPath(filepath.Join(dir, imgName+".tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := tb.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 1 {
		t.Fatalf("tarball: %d layers", len(tl))
	}
	if d, _ := tl[0].Digest(); d != m.Layers[0].Digest {
		t.Fatalf("tarball layer %s, layout layer %s", d, m.Layers[0].Digest)
	}
	tc, _ := tb.ConfigName()
	if tc != m.Config.Digest {
		t.Fatalf("tarball config %s, layout config %s", tc, m.Config.Digest)
	}
	return got
}

type file struct {
	hdr  *tar.Header
	data []byte
}

// files returns the entries of the image's one layer, in tar order.
func files(t *testing.T, img v1.Image) []file {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []file
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, file{h, b})
	}
}

func TestFilterImage(t *testing.T) {
	img, err := Filter(testWasm, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	got := readBack(t, t.TempDir(), "filter", "asyncmesh/filter:test", img)
	fs := files(t, got)
	if len(fs) != 1 || fs[0].hdr.Name != PluginFile || fs[0].hdr.Typeflag != tar.TypeReg {
		names := []string{}
		for _, f := range fs {
			names = append(names, f.hdr.Name)
		}
		t.Fatalf("layer holds %q, want exactly %s", names, PluginFile)
	}
	if !bytes.Equal(fs[0].data, testWasm) {
		t.Fatalf("plugin.wasm: %d bytes differ from the %d-byte input", len(fs[0].data), len(testWasm))
	}
	if !fs[0].hdr.ModTime.Equal(testEpoch) {
		t.Fatalf("plugin.wasm time %v, want %v", fs[0].hdr.ModTime, testEpoch)
	}
	cf, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !cf.Created.Equal(testEpoch) || len(cf.RootFS.DiffIDs) != 1 {
		t.Fatalf("config created %v, %d diff ids", cf.Created, len(cf.RootFS.DiffIDs))
	}
	if _, err := Filter([]byte("not wasm"), testEpoch); err == nil {
		t.Fatal("a file without the Wasm magic made a filter image")
	}
}

func TestStaticImage(t *testing.T) {
	img, err := Static(Program{Name: "collector", Binary: testBinary, CACerts: testCA, WorkDir: "/var/lib/asyncmesh"}, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	got := readBack(t, t.TempDir(), "collector", "asyncmesh/collector:test", img)
	cf, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Fatalf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	user, group, _ := strings.Cut(cf.Config.User, ":")
	if uid, err := strconv.Atoi(user); err != nil || uid == 0 || user != "65532" || group != "65532" {
		t.Fatalf("user %q, want the numeric non-root 65532:65532", cf.Config.User)
	}
	if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/local/bin/collector" {
		t.Fatalf("entrypoint %q", cf.Config.Entrypoint)
	}
	if cf.Config.WorkingDir != "/var/lib/asyncmesh" || !cf.Created.Equal(testEpoch) {
		t.Fatalf("workdir %q created %v", cf.Config.WorkingDir, cf.Created)
	}

	byName := map[string]file{}
	var names []string
	for _, f := range files(t, got) {
		byName[f.hdr.Name] = f
		names = append(names, f.hdr.Name)
		if !f.hdr.ModTime.Equal(testEpoch) {
			t.Errorf("%s: time %v, want %v", f.hdr.Name, f.hdr.ModTime, testEpoch)
		}
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("tar order: %q before %q", names[i-1], names[i])
		}
	}
	want := []string{"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt",
		"home/", "home/nonroot/", "tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/collector",
		"var/", "var/lib/", "var/lib/asyncmesh/"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("layer holds\n%q\nwant\n%q", names, want)
	}
	if f := byName["usr/local/bin/collector"]; !bytes.Equal(f.data, testBinary) || f.hdr.Mode != 0o755 || f.hdr.Uid != 0 {
		t.Errorf("binary: mode %o uid %d, %d bytes", f.hdr.Mode, f.hdr.Uid, len(f.data))
	}
	if f := byName["etc/ssl/certs/ca-certificates.crt"]; !bytes.Equal(f.data, testCA) {
		t.Errorf("CA bundle differs")
	}
	if f := byName["etc/passwd"]; !strings.Contains(string(f.data), "\nnonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no user 65532:\n%s", f.data)
	}
	for _, d := range []string{"var/lib/asyncmesh/", "home/nonroot/"} {
		if f := byName[d]; f.hdr.Uid != UID || f.hdr.Gid != GID || f.hdr.Typeflag != tar.TypeDir {
			t.Errorf("%s: owner %d:%d type %c, want a directory of 65532:65532", d, f.hdr.Uid, f.hdr.Gid, f.hdr.Typeflag)
		}
	}
	if f := byName["tmp/"]; f.hdr.Mode != 0o1777 {
		t.Errorf("tmp mode %o", f.hdr.Mode)
	}

	for _, bad := range []Program{
		{Name: "x", Binary: []byte("#!/bin/sh"), CACerts: testCA, WorkDir: "/w"},
		{Name: "x", Binary: testBinary, WorkDir: "/w"},
		{Name: "x", Binary: testBinary, CACerts: testCA, WorkDir: "w"},
		{Name: "a/b", Binary: testBinary, CACerts: testCA, WorkDir: "/w"},
	} {
		if _, err := Static(bad, testEpoch); err == nil {
			t.Errorf("Static(%+v) made an image", bad)
		}
	}
}

// build writes both kinds of image into dir and returns their digests.
func build(t *testing.T, dir string, epoch time.Time) []v1.Hash {
	t.Helper()
	f, err := Filter(testWasm, epoch)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Static(Program{Name: "controlplane", Binary: testBinary, CACerts: testCA, WorkDir: "/var/lib/asyncmesh"}, epoch)
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for name, img := range map[string]v1.Image{"filter": f, "controlplane": s} {
		if err := Write(dir, name, "asyncmesh/"+name+":test", img); err != nil {
			t.Fatal(err)
		}
	}
	for _, img := range []v1.Image{f, s} {
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// tree returns every file under dir, by relative path.
func tree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReproducible builds the images twice, in separate directories and a
// second apart: same digests, and every written file (layouts and tarballs)
// byte-equal. Another epoch gives other digests.
func TestReproducible(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	da := build(t, a, testEpoch)
	time.Sleep(1100 * time.Millisecond) // the wall clock must not leak in
	db := build(t, b, testEpoch)
	for i := range da {
		if da[i] != db[i] {
			t.Fatalf("image %d: digest %s, then %s", i, da[i], db[i])
		}
	}
	ta, tb := tree(t, a), tree(t, b)
	if len(ta) != len(tb) || len(ta) < 10 {
		t.Fatalf("%d files, then %d", len(ta), len(tb))
	}
	for p, x := range ta {
		if !bytes.Equal(x, tb[p]) {
			t.Errorf("%s differs between the two builds", p)
		}
	}
	// Writing again over the first output replaces it, leaving no stale blob.
	build(t, a, testEpoch.Add(time.Hour))
	if dc := build(t, a, testEpoch); dc[0] != da[0] || dc[1] != da[1] || len(tree(t, a)) != len(ta) {
		t.Fatalf("rebuild over old output: digests %v, %d files (want %v, %d)", dc, len(tree(t, a)), da, len(ta))
	}
	dd := build(t, t.TempDir(), testEpoch.Add(time.Second))
	if dd[0] == da[0] || dd[1] == da[1] {
		t.Fatal("another epoch gave the same digests: the time is not in the images")
	}
}

func TestEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if e, err := Epoch(); err != nil || !e.Equal(time.Unix(0, 0)) {
		t.Fatalf("unset: %v %v", e, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if e, err := Epoch(); err != nil || !e.Equal(testEpoch) {
		t.Fatalf("1700000000: %v %v", e, err)
	}
	for _, bad := range []string{"-1", "1.5", "x", "12x", " 1"} {
		t.Setenv("SOURCE_DATE_EPOCH", bad)
		if _, err := Epoch(); err == nil {
			t.Errorf("SOURCE_DATE_EPOCH=%q accepted", bad)
		}
	}
}
