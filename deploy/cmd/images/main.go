// Command images writes asyncmesh's three images (the filter in the Wasm
// image "compat" variant, the collector and the control plane on no base
// image) under -out as OCI image layouts and docker-style tarballs, without a
// Docker daemon; make images builds its inputs and runs it. Times come from
// SOURCE_DATE_EPOCH (the Unix epoch when unset): two runs on the same inputs
// print the same digests.
package main

import (
	"flag"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/asyncmesh/asyncmesh/deploy/images"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run() error {
	wasm := flag.String("wasm", "build/asyncmesh.wasm", "the filter")
	collector := flag.String("collector", "build/linux-amd64/collector", "the collector, static for linux/amd64")
	controlplane := flag.String("controlplane", "build/linux-amd64/controlplane", "the control plane, static for linux/amd64")
	ca := flag.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle copied into the program images")
	out := flag.String("out", "build/images", "output directory")
	repo := flag.String("repo", "asyncmesh", "repository prefix of the image names")
	tag := flag.String("tag", "dev", "tag of the images")
	flag.Parse()

	epoch, err := images.Epoch()
	if err != nil {
		return err
	}
	caCerts, err := os.ReadFile(*ca)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	write := func(name string, img v1.Image) error {
		ref := *repo + "/" + name + ":" + *tag
		if err := images.Write(*out, name, ref, img); err != nil {
			return err
		}
		d, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s\t%s\t%s/%s (OCI layout), %s/%s.tar\n", ref, d, *out, name, *out, name)
		return nil
	}

	w, err := os.ReadFile(*wasm)
	if err != nil {
		return err
	}
	img, err := images.Filter(w, epoch)
	if err != nil {
		return err
	}
	if err := write("filter", img); err != nil {
		return err
	}
	for _, p := range []struct{ name, path string }{{"collector", *collector}, {"controlplane", *controlplane}} {
		b, err := os.ReadFile(p.path)
		if err != nil {
			return err
		}
		img, err := images.Static(images.Program{Name: p.name, Binary: b, CACerts: caCerts, WorkDir: "/var/lib/asyncmesh"}, epoch)
		if err != nil {
			return err
		}
		if err := write(p.name, img); err != nil {
			return err
		}
	}
	return nil
}
