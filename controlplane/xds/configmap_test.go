package xds

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// configMapVolume writes rules as the kubelet lays out a ConfigMap volume
// (its atomic writer): the data in a timestamped directory, the ..data
// symlink to it, and rules.yaml a symlink through ..data, created once.
type configMapVolume struct {
	t   *testing.T
	dir string
	gen int
}

func (v *configMapVolume) write(rules string) {
	v.t.Helper()
	v.gen++
	ts := filepath.Join(v.dir, fmt.Sprintf("..2026_12_05_21_00_%02d.%d", v.gen, v.gen))
	if err := os.Mkdir(ts, 0o755); err != nil {
		v.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "rules.yaml"), []byte(rules), 0o644); err != nil {
		v.t.Fatal(err)
	}
	// The new generation becomes visible by one rename of a symlink over
	// ..data: the file rules.yaml itself is never written.
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
	link := filepath.Join(v.dir, "rules.yaml")
	if _, err := os.Lstat(link); os.IsNotExist(err) {
		if err := os.Symlink(filepath.Join("..data", "rules.yaml"), link); err != nil {
			v.t.Fatal(err)
		}
	}
}

// The chart mounts the rules ConfigMap as a directory (deploy/k8s checks
// no subPath); this is what the control plane then sees when the ConfigMap
// is edited, and it must reload: the live reload of plain sidecar mode on
// Kubernetes rests on it.
func TestWatchFollowsConfigMapUpdates(t *testing.T) {
	v := &configMapVolume{t: t, dir: t.TempDir()}
	v.write(good)
	s, err := NewServer(filepath.Join(v.dir, "rules.yaml"), wasmOpts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.onRequest(1, request("a", "reports", "", false)); err != nil {
		t.Fatal(err)
	}
	first := s.NodeVersions()["a"][0]

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, nil) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond) // the watch is set up

	v.write(strings.Replace(good, "/slow", "/slower", 1))
	deadline := time.Now().Add(5 * time.Second)
	for s.NodeVersions()["a"][0] == first {
		if time.Now().After(deadline) {
			t.Fatal("the ConfigMap update (a new ..data) was not followed by a new snapshot")
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.mu.Lock()
	f := s.file
	s.mu.Unlock()
	if _, names := snapshotRules(t, f, "a", "reports"); strings.Join(names, ",") != "everywhere" {
		t.Fatalf("rules after the update: %v", names)
	}
	if prefix := f.Rules[0].Match.PathPrefix; prefix != "/slower" {
		t.Fatalf("the reloaded rules match %q, want the update's /slower", prefix)
	}
}
