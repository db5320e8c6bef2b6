package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// record is what the tables show of the API's view of a request
// (collector/openapi.yaml Record); -o json prints the API's own JSON.
type record struct {
	ID        string       `json:"id"`
	TraceID   string       `json:"traceId"`
	Rule      string       `json:"rule"`
	Package   string       `json:"package"`
	Caller    string       `json:"caller"`
	Principal string       `json:"principal"`
	Status    store.Status `json:"status"`
	Request   struct {
		Method, Authority, Path, Callback, Protocol string
	} `json:"request"`
	Error    string             `json:"error"`
	History  []store.Transition `json:"history"`
	Attempts []struct {
		At         time.Time              `json:"at"`
		StatusCode int                    `json:"statusCode"`
		LatencyMs  float64                `json:"latencyMs"`
		Error      string                 `json:"error"`
		Response   *store.AttemptResponse `json:"response"`
	} `json:"attempts"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// filters are the search filters of search, tail and a bulk replay.
type filters struct {
	trace, status, rule, pkg, caller, since, until string
}

// add adds the filters' flags; times adds --since and --until.
func (f *filters) add(fs *flag.FlagSet, what string, times bool) {
	fs.StringVar(&f.trace, "trace", "", what+" of this trace id")
	fs.StringVar(&f.status, "status", "", what+" in this status (queued, processing, delivering, delivered, held, dead, …)")
	fs.StringVar(&f.rule, "rule", "", what+" of this rule")
	fs.StringVar(&f.pkg, "package", "", what+" of this package")
	fs.StringVar(&f.caller, "caller", "", what+" of this caller")
	if times {
		fs.StringVar(&f.since, "since", "", what+" created since: a duration ago (1h, 30m) or an RFC 3339 time")
		fs.StringVar(&f.until, "until", "", what+" created before: a duration ago or an RFC 3339 time")
	}
}

// query is f as the API's query parameters (the search's names).
func (f *filters) query(now time.Time) (url.Values, error) {
	q := url.Values{}
	for k, v := range map[string]string{"traceId": f.trace, "status": f.status, "rule": f.rule, "package": f.pkg, "caller": f.caller} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.status != "" && !store.Status(f.status).Valid() {
		return nil, usagef("--status %q: not a status", f.status)
	}
	since, until, err := f.times(now)
	if err != nil {
		return nil, err
	}
	for name, t := range map[string]time.Time{"since": since, "until": until} {
		if !t.IsZero() {
			q.Set(name, t.Format(time.RFC3339Nano))
		}
	}
	return q, nil
}

// times reads --since and --until (zero when not given).
func (f *filters) times(now time.Time) (since, until time.Time, err error) {
	for _, t := range []struct {
		name, v string
		at      *time.Time
	}{{"since", f.since, &since}, {"until", f.until, &until}} {
		if t.v == "" {
			continue
		}
		if *t.at, err = parseWhen(t.v, now); err != nil {
			return time.Time{}, time.Time{}, usagef("--%s %q: %v", t.name, t.v, err)
		}
	}
	return since, until, nil
}

// parseWhen reads "1h" (that long before now), an RFC 3339 time or a date.
func parseWhen(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("a negative duration")
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("want a duration ago (90m) or an RFC 3339 time")
}

func init() {
	var getWait time.Duration
	commands = append(commands, &command{
		name: "get", args: "ID [--wait 30s]", operator: true,
		summary: "show one request: status, timeline with the time spent in each stage, attempts and what the receiver answered",
		flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&getWait, "wait", 0, "wait up to this long for the request to end (delivered or dead)")
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("want one request id, got %d arguments", len(args))
			}
			q := url.Values{}
			if getWait > 0 {
				q.Set("wait", getWait.String())
				e.global.timeout += getWait
			}
			var r record
			data, err := e.getJSON("/v1/requests/"+url.PathEscape(args[0]), q, &r)
			if err != nil {
				return err
			}
			if e.json {
				_, err = e.stdout.Write(data)
				return err
			}
			return printRecord(e.stdout, &r)
		},
	})

	var sf filters
	var all, count bool
	var limit int
	var cursor, order string
	commands = append(commands, &command{
		name: "search", args: "[--trace ID] [--status S] [--rule R] [--package P] [--caller C] [--since 1h] [--until T] [--count] [--all]", operator: true,
		summary: "list requests, newest first, by trace id, status, rule, package, caller and time",
		flags: func(fs *flag.FlagSet) {
			sf.add(fs, "requests", true)
			fs.IntVar(&limit, "limit", 50, "requests per page (1-500)")
			fs.StringVar(&order, "order", "desc", "desc (newest first) or asc")
			fs.StringVar(&cursor, "cursor", "", "the page after this cursor (a search prints it when there is more)")
			fs.BoolVar(&all, "all", false, "follow every page (at most 100,000 requests)")
			fs.BoolVar(&count, "count", false, "print only how many requests match")
		},
		run: func(e *env, args []string) error {
			if len(args) != 0 {
				return usagef("unexpected argument %q (filters are flags)", args[0])
			}
			if order != "desc" && order != "asc" {
				return usagef("--order %q: want desc or asc", order)
			}
			if limit < 1 || limit > store.MaxLimit {
				return usagef("--limit %d: want 1-%d", limit, store.MaxLimit)
			}
			q, err := sf.query(time.Now())
			if err != nil {
				return err
			}
			if count {
				var c struct {
					Count int64 `json:"count"`
				}
				data, err := e.getJSON("/v1/requests/count", q, &c)
				if err != nil {
					return err
				}
				if e.json {
					_, err = e.stdout.Write(data)
					return err
				}
				_, err = fmt.Fprintln(e.stdout, c.Count)
				return err
			}
			q.Set("limit", strconv.Itoa(limit))
			q.Set("order", order)
			return search(e, q, cursor, all)
		},
	})
}

// maxAll bounds search --all.
const maxAll = 100_000

func search(e *env, q url.Values, cursor string, all bool) error {
	tw := tabwriter.NewWriter(e.stdout, 2, 8, 2, ' ', 0)
	shown := 0
	for {
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		var page struct {
			Records []record `json:"records"`
			Next    string   `json:"next"`
		}
		data, err := e.getJSON("/v1/requests", q, &page)
		if err != nil {
			return err
		}
		if e.json {
			if !all { // the page as the API gave it, next cursor included
				_, err = e.stdout.Write(data)
				return err
			}
			var raw struct {
				Records []json.RawMessage `json:"records"`
			}
			_ = json.Unmarshal(data, &raw)
			for _, r := range raw.Records { // one record per line
				fmt.Fprintf(e.stdout, "%s\n", compact(r))
			}
		}
		for i, r := range page.Records {
			if !e.json {
				if shown+i == 0 {
					fmt.Fprintln(tw, "ID\tSTATUS\tRULE\tCALLER\tTRACE\tCREATED\tUPDATED")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Status, dash(r.Rule), dash(r.Caller), dash(r.TraceID),
					r.CreatedAt.Local().Format(time.DateTime), ago(r.UpdatedAt))
			}
		}
		shown += len(page.Records)
		if page.Next == "" || !all || shown >= maxAll {
			tw.Flush()
			if page.Next != "" && !e.json {
				fmt.Fprintf(e.stderr, "more: --cursor %s (or --all)\n", page.Next)
			}
			if shown == 0 && !e.json {
				fmt.Fprintln(e.stderr, "no request matches")
			}
			return nil
		}
		cursor = page.Next
	}
}

// compact is b on one line.
func compact(b []byte) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

// printRecord prints r for people: the request, its timeline with the time
// spent in each status, and each attempt with the receiver's answer.
func printRecord(w io.Writer, r *record) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("ID", r.ID)
	row("Trace", r.TraceID)
	row("Status", string(r.Status))
	row("Rule", r.Rule)
	row("Package", r.Package)
	who := r.Caller
	if r.Principal != "" {
		who += " (" + r.Principal + ")"
	}
	row("Caller", strings.TrimSpace(who))
	row("Request", strings.TrimSpace(r.Request.Method+" "+r.Request.Authority+r.Request.Path))
	if r.Request.Callback != "" {
		row("Callback", r.Request.Callback+" ("+r.Request.Protocol+")")
	}
	row("Error", r.Error)
	row("Created", r.CreatedAt.Local().Format(time.RFC3339))
	row("Updated", r.UpdatedAt.Local().Format(time.RFC3339))
	tw.Flush()

	fmt.Fprintln(w, "\nTimeline:")
	tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  STATUS\tAT\tFOR\tEVENT\tNOTE")
	for i, h := range r.History {
		spent := "" // the last status lasts until now (or is terminal)
		if i+1 < len(r.History) {
			spent = r.History[i+1].At.Sub(h.At).Round(time.Millisecond).String()
		} else if !h.Status.Terminal() {
			spent = time.Since(h.At).Round(time.Millisecond).String() + " so far"
		}
		note := h.Detail
		if h.Node != "" {
			note = strings.TrimSpace(note + " node=" + h.Node)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", h.Status, h.At.Local().Format("15:04:05.000"), dash(spent), dash(string(h.Event)), note)
	}
	tw.Flush()
	if len(r.History) > 1 {
		fmt.Fprintf(w, "  total %v\n", r.History[len(r.History)-1].At.Sub(r.History[0].At).Round(time.Millisecond))
	}

	if len(r.Attempts) > 0 {
		fmt.Fprintln(w, "\nAttempts:")
		tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  #\tAT\tSTATUS\tLATENCY\tERROR\tANSWER")
		for i, a := range r.Attempts {
			status, answer := "-", ""
			if a.StatusCode != 0 {
				status = strconv.Itoa(a.StatusCode)
			}
			if a.Response != nil {
				answer = a.Response.Status
				if b := strings.Join(strings.Fields(a.Response.Body), " "); b != "" && a.Response.BodyEncoding == "" {
					if len(b) > 60 {
						b = b[:60] + "…"
					}
					answer += ": " + b
				}
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%.1fms\t%s\t%s\n", i+1, a.At.Local().Format("15:04:05.000"), status, a.LatencyMs, dash(a.Error), answer)
		}
		tw.Flush()
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago is how long before now t was, for tables.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
