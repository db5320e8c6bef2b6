package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/retry"
)

func init() {
	var tf filters
	var max int
	commands = append(commands, &command{
		name: "tail", args: "[--trace ID] [--status S] [--rule R] [--package P] [--caller C] [--max N]", operator: true,
		summary: "follow new requests and their status changes live (Ctrl-C stops)",
		flags: func(fs *flag.FlagSet) {
			tf.add(fs, "changes of requests", false)
			fs.IntVar(&max, "max", 0, "stop after this many changes (0: run until stopped)")
		},
		run: func(e *env, args []string) error {
			if len(args) != 0 {
				return usagef("unexpected argument %q (filters are flags)", args[0])
			}
			if max < 0 {
				return usagef("--max %d: want 0 or more", max)
			}
			q, err := tf.query(time.Now())
			if err != nil {
				return err
			}
			a, err := e.api()
			if err != nil {
				return err
			}
			if !e.json {
				fmt.Fprintf(e.stdout, "%-12s  %-26s  %-10s  %-16s  %-16s  %s\n", "TIME", "ID", "STATUS", "RULE", "CALLER", "TRACE")
			}
			seen := 0
			err = follow(e.ctx, a, "/v1/stream?"+q.Encode(), func(data []byte) bool {
				if e.json {
					fmt.Fprintf(e.stdout, "%s\n", compact(data))
				} else {
					var r record
					if json.Unmarshal(data, &r) != nil {
						return true // not a record: an event of a newer collector
					}
					fmt.Fprintf(e.stdout, "%-12s  %-26s  %-10s  %-16s  %-16s  %s\n", r.UpdatedAt.Local().Format("15:04:05.000"),
						r.ID, r.Status, dash(r.Rule), dash(r.Caller), dash(r.TraceID))
				}
				seen++
				return max == 0 || seen < max
			}, e.stderr)
			if errors.Is(err, context.Canceled) && e.ctx.Err() != nil {
				return nil // Ctrl-C: done
			}
			return err
		},
	})
}

// maxEventLine bounds one line of the stream (a record with its attempt log).
const maxEventLine = 4 << 20

// follow reads the server-sent events of path and calls on with the data of
// each "record" event until on returns false or ctx ends. A dropped stream
// is opened again from the last event's id (Last-Event-ID), after a pause
// that grows to 10 s; an answer of the API (401, 404, …) ends it.
func follow(ctx context.Context, a *api, path string, on func([]byte) bool, log io.Writer) error {
	backoff := retry.Exponential{Initial: time.Second, Max: 10 * time.Second}
	lastID := ""
	for failures := 0; ; {
		h := http.Header{}
		if lastID != "" {
			h.Set("last-event-id", lastID)
		}
		h.Set("accept", "text/event-stream")
		resp, err := a.send(ctx, "GET", path, nil, nil, h)
		var ae *apiError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &ae) && ae.Status != http.StatusServiceUnavailable:
			return err
		case err == nil:
			failures = 0
			var done bool
			done, lastID, err = readEvents(resp, lastID, on)
			resp.Body.Close()
			if done {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		failures++
		wait := backoff.Delay(failures)
		fmt.Fprintf(log, "asyncmesh tail: the stream ended (%v); again in %v\n", err, wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// readEvents dispatches the events of one stream (the text/event-stream
// format: "id:", "event:", "data:" lines, a blank line ends an event, ":"
// starts a comment). It returns whether on asked to stop, and the last id.
func readEvents(resp *http.Response, lastID string, on func([]byte) bool) (bool, string, error) {
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	var event, id string
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 && (event == "" || event == "record") {
				if !on([]byte(strings.Join(data, "\n"))) {
					return true, lastID, nil
				}
			}
			if id != "" {
				lastID = id
			}
			event, id, data = "", "", nil
		case strings.HasPrefix(line, ":"):
		default:
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimPrefix(v, " ")
			switch k {
			case "event":
				event = v
			case "id":
				id = v
			case "data":
				data = append(data, v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return false, lastID, err
	}
	return false, lastID, errors.New("closed by the server")
}
