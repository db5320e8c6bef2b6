package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/external"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Declared processing nodes (rules.Node) and failover. A rule's
// target.nodes are tried in order at each dispatch: a node that fails
// (no connection, 408/429/5xx, a timeout, the SSRF guard's refusal, or a
// 4xx refusal) passes the task to the next one, and a node whose health is
// disabled is skipped without an attempt. Node health is endpoint health
// (health.go) under an id of its own per node (nodeEndpoint), so that the
// operator API /v1/endpoints lists the nodes with the callbacks and enables
// them the same way.
//
// The node that took the task is named in the hand-off's history entry
// (handOffDetail); its completion must be authenticated as that node's
// (completionNode), so a node the task failed over from cannot complete it.

// nodesDisabledRetry is how long a dispatch whose nodes are all disabled
// waits before looking again. The record stays processing, unleased: it is
// neither failed (the caller was told it was accepted, and an operator may
// enable a node) nor run.
var nodesDisabledRetry = 30 * time.Second

// nodeEndpoint returns the endpoint health id of a declared node ("node:"
// name as the caller, protocol "node"), and the caller and protocol kept
// with it.
func nodeEndpoint(name, url string) (id, caller, protocol string) {
	caller, protocol = "node:"+name, "node"
	return store.EndpointID(caller, protocol, url), caller, protocol
}

// handOffDetail is the history note of a hand-off: "node NAME URL" for a
// declared node, the URL alone for an inline target (as before nodes were
// declared).
func handOffDetail(c rules.Candidate) string {
	if c.Name == "" {
		return c.Target.Endpoint
	}
	return "node " + c.Name + " " + c.Target.Endpoint
}

// handOffNode returns the declared node that r's last hand-off gave the
// task to, if any (Transition.Node; an inline target's hand-off names none).
func handOffNode(r *store.Record) (name string, ok bool) {
	for i := len(r.History) - 1; i >= 0; i-- {
		if h := r.History[i]; h.Event == store.HandOff {
			return h.Node, h.Node != ""
		}
	}
	return "", false
}

// errNodesDisabled is a dispatch whose nodes are all disabled.
var errNodesDisabled = errors.New("every node of the rule is disabled")

// sendTask sends task to the first of t's nodes that takes it, skipping
// disabled ones, and returns that node. The error joins each node's
// failure; it is a *external.PermanentError only when every node failed
// for good (retrying would not change it), and errNodesDisabled when no
// node was tried.
func (c *Collector) sendTask(ctx context.Context, log *slog.Logger, t *rules.Target, task external.Task) (rules.Candidate, error) {
	cands := t.Candidates()
	var errs []string
	tried, permanent := 0, true
	for _, cand := range cands {
		var id, caller, protocol string
		if cand.Name != "" {
			id, caller, protocol = nodeEndpoint(cand.Name, cand.Target.Endpoint)
			if reason, off := c.health.disabledID(id); off {
				log.Info("external: node disabled, skipped", "node", cand.Name, "reason", reason)
				errs = append(errs, fmt.Sprintf("node %s is disabled (%s)", cand.Name, reason))
				continue
			}
		}
		tried++
		task.Deadline = time.Now().Add(cand.Target.Timeout.D()).UTC()
		err := c.nodes.Dispatch(ctx, cand.Target, task)
		if cand.Name != "" {
			out := delivery.Delivered
			var perm *external.PermanentError
			switch {
			case err == nil:
			case errors.As(err, &perm) && perm.Refusal:
				out = delivery.Refused // the guard, not the node: not its health
			default:
				out = delivery.Retry
			}
			c.health.observeID(ctx, id, cand.Target.Endpoint, protocol, caller, out, time.Now().UTC())
		}
		if err == nil {
			return cand, nil
		}
		var perm *external.PermanentError
		if !errors.As(err, &perm) {
			permanent = false
		}
		if len(cands) > 1 {
			log.Warn("external: node failed, trying the next", "node", cand.Name, "err", err)
			errs = append(errs, fmt.Sprintf("node %s: %v", cand.Name, err))
		} else {
			return cand, err
		}
	}
	msg := strings.Join(errs, "; ")
	switch {
	case tried == 0:
		return rules.Candidate{}, fmt.Errorf("%w: %s", errNodesDisabled, msg)
	case permanent:
		return rules.Candidate{}, &external.PermanentError{Msg: msg}
	}
	return rules.Candidate{}, errors.New(msg)
}

// handedOff returns the candidate of t that r was handed off to: the
// declared node its last hand-off names, or the only candidate of a target
// that has one (an inline target, or a single node). ok is false when the
// node cannot be known: no hand-off is recorded yet (the node may complete
// before the collector has written it), or the node is no longer one of
// the rule's.
func handedOff(r *store.Record, t *rules.Target) (c rules.Candidate, ok bool) {
	cands := t.Candidates()
	name, named := handOffNode(r)
	if !named {
		if len(cands) == 1 && cands[0].Name == "" {
			return cands[0], true // inline: there is one node
		}
		if len(cands) == 1 && r.Last(store.HandOff).IsZero() {
			return cands[0], true
		}
		return rules.Candidate{}, false
	}
	for _, cand := range cands {
		if cand.Name == name {
			return cand, true
		}
	}
	return rules.Candidate{}, false
}

// preverifyAny reports whether a completion's headers pass the body-less
// checks (external.Client.Preverify) of one of t's nodes.
func (c *Collector) preverifyAny(t *rules.Target, id string, h http.Header) bool {
	for _, cand := range t.Candidates() {
		if c.nodes.Preverify(cand.Target, id, h) == nil {
			return true
		}
	}
	return false
}
