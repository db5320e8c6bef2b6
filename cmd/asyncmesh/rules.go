package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
)

// nodeStatus is one node as the control plane sees it (controlplane/xds
// NodeStatus; the collector's GET /v1/rules passes them on).
type nodeStatus struct {
	Node      string `json:"node"`
	Cluster   string `json:"cluster"`
	Collector bool   `json:"collector"`
	Served    string `json:"served"`
	Acked     string `json:"acked"`
	Nacks     int    `json:"nacks"`
	LastNack  string `json:"lastNack"`
	Connected bool   `json:"connected"`
}

// state says in a word where n stands.
func (n nodeStatus) state() string {
	switch {
	case !n.Connected:
		return "disconnected"
	case n.Acked == n.Served:
		return "applied"
	case n.Nacks > 0 && n.LastNack != "":
		return "refused"
	}
	return "applying"
}

// errNotApplied is rules --check finding a node that has not applied its rules.
var errNotApplied = errors.New("not every connected node has applied the rules it was served")

func init() {
	var check bool
	commands = append(commands, &command{
		name: "rules", args: "[--check]", operator: true,
		summary: "the rules version each node (Envoy, collector) was served and acknowledged, from the control plane",
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&check, "check", false, "exit 1 unless every connected node acknowledged the version it was served")
		},
		run: func(e *env, args []string) error {
			if len(args) != 0 {
				return usagef("unexpected argument %q", args[0])
			}
			var st struct {
				Collector struct {
					Node    string `json:"node"`
					Version string `json:"version"`
				} `json:"collector"`
				ControlPlane string       `json:"controlplane"`
				Nodes        []nodeStatus `json:"nodes"`
			}
			data, err := e.getJSON("/v1/rules", nil, &st)
			if err != nil {
				return err
			}
			behind := 0
			for _, n := range st.Nodes {
				if n.Connected && n.Acked != n.Served {
					behind++
				}
			}
			if e.json {
				_, err = e.stdout.Write(data)
			} else {
				fmt.Fprintf(e.stdout, "this collector (%s) applies rules %s\n", dash(st.Collector.Node), dash(st.Collector.Version))
				if st.ControlPlane != "" {
					fmt.Fprintf(e.stdout, "control plane: %s\n", st.ControlPlane)
				}
				if len(st.Nodes) > 0 {
					tw := tabwriter.NewWriter(e.stdout, 2, 8, 2, ' ', 0)
					fmt.Fprintln(tw, "NODE\tKIND\tCLUSTER\tSTATE\tSERVED\tACKED\tNACKS\tLAST NACK")
					for _, n := range st.Nodes {
						kind := "envoy"
						if n.Collector {
							kind = "collector"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Node, kind, dash(n.Cluster), n.state(), dash(n.Served),
							dash(n.Acked), n.Nacks, dash(oneLine(n.LastNack, 60)))
					}
					err = tw.Flush()
				}
			}
			if err == nil && check && behind > 0 {
				return fmt.Errorf("%w (%d behind)", errNotApplied, behind)
			}
			return err
		},
	})

	commands = append(commands, &command{
		name: "validate", args: "FILE...",
		summary: "check rules files as the control plane would load them (errors name file:line:col)",
		run: func(e *env, args []string) error {
			if len(args) == 0 {
				return usagef("want one or more rules files")
			}
			bad := 0
			for _, p := range args {
				f, err := rulesfile.Load(p)
				if err != nil {
					fmt.Fprintln(e.stderr, err)
					bad++
					continue
				}
				fmt.Fprintf(e.stdout, "%s: ok, %d rules, %d packages, %d callers, %d nodes, %d secrets declared\n",
					p, len(f.Rules), len(f.Packages), len(f.Callers), len(f.Nodes), len(f.Secrets))
			}
			if bad > 0 {
				return fmt.Errorf("%d of %d files are not valid", bad, len(args))
			}
			return nil
		},
	})
}

// oneLine is s on one line, at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}
