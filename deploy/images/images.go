// Package images builds asyncmesh's container images without a Docker daemon,
// reproducibly: the same inputs and epoch give the same digests.
//
//   - Filter: the Wasm filter in the "compat" variant of the Wasm image
//     specification, which both Istio's WasmPlugin and Envoy Gateway's
//     EnvoyExtensionPolicy load: an OCI manifest with exactly one
//     application/vnd.oci.image.layer.v1.tar+gzip layer whose tar holds one
//     file, plugin.wasm.
//   - Static: a statically linked Go program (CGO_ENABLED=0) on no base image,
//     with /etc/passwd and /etc/group naming the non-root user 65532, a CA
//     bundle at /etc/ssl/certs/ca-certificates.crt, a writable /tmp and a work
//     directory owned by that user, for linux/amd64.
//
// Every tar entry has the epoch as its time and the tars list their entries
// sorted by name; configs and history carry the same epoch. Write puts an
// image in an OCI image layout directory and a docker-style tarball.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// PluginFile is the one file of the filter image's layer, the name Istio
	// and Envoy Gateway look for. Its tar name is exactly that, at the root
	// without "./": some loaders compare the whole name, others its base.
	PluginFile = "plugin.wasm"
	// UID and GID of the non-root user the program images run as.
	UID = 65532
	GID = 65532
	// CAPath is where the program images hold the CA bundle (Go's crypto/x509
	// reads it there on Linux).
	CAPath = "etc/ssl/certs/ca-certificates.crt"
	// RefAnnotation names an image in an OCI layout's index.json.
	RefAnnotation = "org.opencontainers.image.ref.name"
)

// Epoch returns the time the images carry: SOURCE_DATE_EPOCH (seconds since
// 1970) when set, the Unix epoch otherwise.
func Epoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	var sec int64
	if _, err := fmt.Sscanf(s, "%d", &sec); err != nil || sec < 0 || fmt.Sprint(sec) != s {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want whole seconds since 1970", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// entry is one file or directory of a layer.
type entry struct {
	name     string // relative, slash-separated, no trailing slash
	dir      bool
	mode     int64
	uid, gid int
	data     []byte
}

// layerTar returns a tar of the entries (and of the parent directories they
// leave out, root-owned 0755), sorted by name, every time the epoch.
func layerTar(entries []entry, epoch time.Time) ([]byte, error) {
	byName := map[string]entry{}
	for _, e := range entries {
		if e.name == "" || path.Clean(e.name) != e.name || strings.HasPrefix(e.name, "/") || strings.HasPrefix(e.name, "../") || e.name == ".." {
			return nil, fmt.Errorf("images: bad entry name %q", e.name)
		}
		if _, dup := byName[e.name]; dup {
			return nil, fmt.Errorf("images: entry %q twice", e.name)
		}
		byName[e.name] = e
	}
	for _, e := range entries {
		for d := path.Dir(e.name); d != "."; d = path.Dir(d) {
			if p, ok := byName[d]; ok {
				if !p.dir {
					return nil, fmt.Errorf("images: %q is a file and the parent of %q", d, e.name)
				}
				continue
			}
			byName[d] = entry{name: d, dir: true, mode: 0o755}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := byName[n]
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// image returns an OCI image (manifest, config and layer media types) of one
// layer made of the entries, with the config cfg.
func image(entries []entry, cfg v1.Config, platform v1.Platform, createdBy string, epoch time.Time) (v1.Image, error) {
	tb, err := layerTar(entries, epoch)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tb)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: epoch}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: created, CreatedBy: createdBy},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = created
	cf.OS = platform.OS
	cf.Architecture = platform.Architecture
	cf.Variant = platform.Variant
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// Filter returns the filter image (the compat variant): one layer holding
// exactly plugin.wasm, the wasm bytes.
func Filter(wasm []byte, epoch time.Time) (v1.Image, error) {
	if len(wasm) < 4 || string(wasm[:4]) != "\x00asm" {
		return nil, fmt.Errorf("images: the filter is not a Wasm module (no \\0asm magic)")
	}
	return image([]entry{{name: PluginFile, mode: 0o644, data: wasm}},
		v1.Config{Labels: map[string]string{"org.opencontainers.image.title": "asyncmesh filter"}},
		v1.Platform{OS: "wasip1", Architecture: "wasm"},
		"asyncmesh deploy/images: "+PluginFile, epoch)
}

// Program describes a static program image.
type Program struct {
	Name    string   // the program, installed as /usr/local/bin/Name
	Binary  []byte   // statically linked for linux/amd64
	CACerts []byte   // PEM bundle, installed at /etc/ssl/certs/ca-certificates.crt
	WorkDir string   // absolute, owned by the user, the working directory
	Args    []string // default arguments (the image's Cmd); nil for none
}

// Static returns the image of a static program for linux/amd64 on no base
// image, run as 65532:65532, its entrypoint the program.
func Static(p Program, epoch time.Time) (v1.Image, error) {
	if p.Name == "" || strings.ContainsAny(p.Name, "/\\") {
		return nil, fmt.Errorf("images: bad program name %q", p.Name)
	}
	if len(p.Binary) < 4 || string(p.Binary[:4]) != "\x7fELF" {
		return nil, fmt.Errorf("images: %s is not an ELF binary", p.Name)
	}
	if len(p.CACerts) == 0 {
		return nil, fmt.Errorf("images: %s: no CA certificates", p.Name)
	}
	if !path.IsAbs(p.WorkDir) || path.Clean(p.WorkDir) != p.WorkDir || p.WorkDir == "/" {
		return nil, fmt.Errorf("images: %s: work directory %q is not an absolute path below /", p.Name, p.WorkDir)
	}
	bin := "usr/local/bin/" + p.Name
	entries := []entry{
		{name: bin, mode: 0o755, data: p.Binary},
		{name: "etc/passwd", mode: 0o644, data: []byte(fmt.Sprintf(
			"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, GID))},
		{name: "etc/group", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", GID))},
		{name: CAPath, mode: 0o644, data: p.CACerts},
		{name: "home/nonroot", dir: true, mode: 0o700, uid: UID, gid: GID},
		{name: "tmp", dir: true, mode: 0o1777},
		{name: p.WorkDir[1:], dir: true, mode: 0o700, uid: UID, gid: GID},
	}
	return image(entries, v1.Config{
		User:       fmt.Sprintf("%d:%d", UID, GID),
		Entrypoint: []string{"/" + bin},
		Cmd:        p.Args,
		WorkingDir: p.WorkDir,
		Env: []string{
			"PATH=/usr/local/bin",
			"SSL_CERT_FILE=/" + CAPath,
		},
		Labels: map[string]string{"org.opencontainers.image.title": "asyncmesh " + p.Name},
	}, v1.Platform{OS: "linux", Architecture: "amd64"}, "asyncmesh deploy/images: "+bin, epoch)
}

// Write writes img as the OCI image layout directory dir/name (replaced if
// there, the image named ref in its index.json) and the docker-style tarball
// dir/name.tar (tagged ref; docker load and crane push read either).
func Write(dir, imgName, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("images: %s: %w", ref, err)
	}
	if imgName == "" || strings.ContainsAny(imgName, "/\\") || imgName == "." || imgName == ".." {
		return fmt.Errorf("images: bad image name %q", imgName)
	}
	ld := filepath.Join(dir, imgName)
	if err := os.RemoveAll(ld); err != nil {
		return err
	}
	lp, err := layout.Write(ld, empty.Index)
	if err != nil {
		return err
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{RefAnnotation: ref})); err != nil {
		return err
	}
	return tarball.WriteToFile(filepath.Join(dir, imgName+".tar"), tag, img)
}
