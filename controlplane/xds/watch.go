package xds

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Debounce is how long the file must stay quiet before a reload: editors and
// config-map updates write in several steps.
const Debounce = 300 * time.Millisecond

// Watch reloads when the rules file changes, and when reload receives, until
// ctx ends. It watches the file's directory, so that files replaced by rename
// (editors, Kubernetes config maps) are followed.
func (s *Server) Watch(ctx context.Context, reload <-chan struct{}) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", s.path, err)
	}
	defer w.Close()
	dir := filepath.Dir(s.path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	base := filepath.Base(s.path)
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			// Config maps swap a ..data symlink; anything else in the
			// directory is not ours.
			if name := filepath.Base(ev.Name); name == base || name == "..data" {
				timer = time.After(Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("controlplane: file watcher", "err", err)
		case <-reload:
			s.log.Info("controlplane: reload requested (SIGHUP)")
			_ = s.Reload()
		case <-timer:
			timer = nil
			_ = s.Reload()
		}
	}
}
