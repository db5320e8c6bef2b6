package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// endpointView is the API's view of an endpoint (collector/openapi.yaml).
type endpointView struct {
	store.Endpoint
	SuccessRatio float64 `json:"successRatio"`
	Held         *int64  `json:"held,omitempty"` // of a disabled endpoint
}

func init() {
	var disabled bool
	commands = append(commands, &command{
		name: "endpoints", args: "[--disabled] | get ID | enable ID | disable ID", operator: true,
		summary: "callback endpoints' health; enable one to resume its held deliveries, or disable it",
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&disabled, "disabled", false, "list only disabled endpoints")
		},
		run: func(e *env, args []string) error {
			if len(args) == 0 {
				return listEndpoints(e, disabled)
			}
			if len(args) != 2 {
				return usagef("want get, enable or disable and an endpoint id")
			}
			path := "/v1/endpoints/" + url.PathEscape(args[1])
			method := "GET"
			switch args[0] {
			case "get":
			case "enable", "disable":
				method, path = "POST", path+"/"+args[0]
			default:
				return usagef("%q: want get, enable or disable", args[0])
			}
			var ep endpointView
			data, err := e.doJSON(method, path, nil, nil, &ep)
			if err != nil {
				return err
			}
			if e.json {
				_, err = e.stdout.Write(data)
				return err
			}
			return printEndpoints(e, []endpointView{ep})
		},
	})
}

func listEndpoints(e *env, disabled bool) error {
	q := url.Values{"limit": {strconv.Itoa(store.MaxLimit)}}
	if disabled {
		q.Set("disabled", "true")
	}
	var all []endpointView
	for {
		var page struct {
			Endpoints []endpointView `json:"endpoints"`
			Next      string         `json:"next"`
		}
		if _, err := e.getJSON("/v1/endpoints", q, &page); err != nil {
			return err
		}
		all = append(all, page.Endpoints...)
		if page.Next == "" || len(all) >= maxAll {
			break
		}
		q.Set("after", page.Next)
	}
	if e.json { // every page's endpoints in one list
		return json.NewEncoder(e.stdout).Encode(map[string]any{"endpoints": append([]endpointView{}, all...)})
	}
	if len(all) == 0 {
		fmt.Fprintln(e.stderr, "no endpoint has been called yet")
		return nil
	}
	return printEndpoints(e, all)
}

func printEndpoints(e *env, eps []endpointView) error {
	tw := tabwriter.NewWriter(e.stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tSUCCESS\tATTEMPTS\tFAILING\tCALLER\tPROTOCOL\tURL")
	for _, ep := range eps {
		state := "enabled"
		if ep.Disabled {
			state = "disabled"
			if ep.Held != nil {
				state += fmt.Sprintf(", %d held", *ep.Held)
			}
			if ep.Reason != "" {
				state += " (" + oneLine(ep.Reason, 40) + ")"
			}
		}
		failing := "-"
		if ep.ConsecutiveFailures > 0 {
			failing = fmt.Sprintf("%d since %s", ep.ConsecutiveFailures, ago(ep.FailingSince))
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f%%\t%d\t%s\t%s\t%s\t%s\n", ep.ID, state, 100*ep.SuccessRatio, ep.Attempts, failing,
			dash(ep.Caller), ep.Protocol, ep.URL)
	}
	return tw.Flush()
}
