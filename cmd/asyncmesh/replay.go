package main

import (
	"bufio"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

func init() {
	var rf filters
	var dryRun, yes bool
	commands = append(commands, &command{
		name: "replay", args: "ID | --status dead|delivered [--rule R] [--package P] [--caller C] [--trace T] [--since 1h] [--until T] [--dry-run] [--yes]", operator: true,
		summary: "deliver a request's callback again, or those of every request a filter matches (counted first, then confirmed)",
		flags: func(fs *flag.FlagSet) {
			rf.add(fs, "replay requests", true)
			fs.BoolVar(&dryRun, "dry-run", false, "only count the requests a bulk replay would deliver again")
			fs.BoolVar(&yes, "yes", false, "replay without asking (scripts: a bulk replay without a terminal needs it)")
		},
		run: func(e *env, args []string) error {
			switch {
			case len(args) > 1:
				return usagef("want one request id, or filters")
			case len(args) == 1:
				if rf != (filters{}) || dryRun {
					return usagef("a request id, or filters: not both")
				}
				return replayOne(e, args[0])
			case rf == (filters{}):
				return usagef("want a request id, or filters (--status dead --since 1h, say)")
			}
			return replayMany(e, rf, dryRun, yes)
		},
	})
}

func replayOne(e *env, id string) error {
	var out struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	data, err := e.doJSON("POST", "/v1/requests/"+url.PathEscape(id)+"/replay", nil, nil, &out)
	if err != nil {
		return err
	}
	if e.json {
		_, err = e.stdout.Write(data)
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "replaying %s: %s\n", out.ID, out.Status)
	return err
}

// bulkBody is the body of POST /v1/deliveries/replay.
type bulkBody struct {
	Status  string    `json:"status,omitempty"`
	Rule    string    `json:"rule,omitempty"`
	Package string    `json:"package,omitempty"`
	Caller  string    `json:"caller,omitempty"`
	TraceID string    `json:"traceId,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	Until   time.Time `json:"until,omitzero"`
	Cursor  string    `json:"cursor,omitempty"`
	Limit   int       `json:"limit,omitempty"`
	DryRun  bool      `json:"dryRun,omitempty"`
}

// replayMany counts what f matches, asks (or takes --yes), then replays
// page by page.
func replayMany(e *env, f filters, dryRun, yes bool) error {
	since, until, err := f.times(time.Now())
	if err != nil {
		return err
	}
	if f.status == "" {
		f.status = string(store.Dead)
	} else if f.status != string(store.Dead) && f.status != string(store.Delivered) {
		return usagef("--status %s: only dead or delivered requests are replayed", f.status)
	}
	body := bulkBody{Status: f.status, Rule: f.rule, Package: f.pkg, Caller: f.caller, TraceID: f.trace, Limit: store.MaxLimit}
	body.Since, body.Until = since, until

	count := body
	count.DryRun, count.Limit = true, 0
	var matched struct {
		Matched int64 `json:"matched"`
	}
	data, err := e.doJSON("POST", "/v1/deliveries/replay", nil, count, &matched)
	if err != nil {
		return err
	}
	if dryRun {
		if e.json {
			_, err = e.stdout.Write(data)
		} else {
			_, err = fmt.Fprintf(e.stdout, "%d %s requests would be delivered again\n", matched.Matched, f.status)
		}
		return err
	}
	if matched.Matched == 0 {
		if !e.json {
			fmt.Fprintf(e.stdout, "no %s request matches: nothing to replay\n", f.status)
		}
		return nil
	}
	if !yes {
		if !e.interactive {
			return usagef("%d %s requests match: give --yes to replay them (no terminal to ask)", matched.Matched, f.status)
		}
		fmt.Fprintf(e.stderr, "Deliver the callbacks of %d %s requests again? [y/N] ", matched.Matched, f.status)
		answer, _ := bufio.NewReader(e.stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(e.stderr, "nothing replayed")
			return nil
		}
	}
	var replayed, skipped int
	for {
		var page struct {
			Replayed []string `json:"replayed"`
			Skipped  []string `json:"skipped"`
			Next     string   `json:"next"`
		}
		if _, err := e.doJSON("POST", "/v1/deliveries/replay", nil, body, &page); err != nil {
			return fmt.Errorf("after %d replayed: %w", replayed, err)
		}
		replayed, skipped = replayed+len(page.Replayed), skipped+len(page.Skipped)
		if !e.json {
			fmt.Fprintf(e.stderr, "\rreplayed %d, skipped %d", replayed, skipped)
		}
		if page.Next == "" {
			break
		}
		body.Cursor = page.Next
	}
	if e.json {
		_, err = fmt.Fprintf(e.stdout, "{\"replayed\":%d,\"skipped\":%d}\n", replayed, skipped)
		return err
	}
	fmt.Fprintln(e.stderr)
	_, err = fmt.Fprintf(e.stdout, "replayed %d requests (%d skipped: they had moved on since the count)\n", replayed, skipped)
	return err
}
