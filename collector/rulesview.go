package collector

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// GET /v1/rules (operator): the rules version this collector applies, and
// the version the control plane served each node and the one the node
// acknowledged, from the control plane's GET /v1/nodes (on its -metrics
// listener, Config.ControlPlaneURL, with Config.ControlPlaneToken):
//
//	{"collector": {"node": "...", "version": "..."},
//	 "controlplane": "ok" | "not configured" | "unavailable",
//	 "error": "why unavailable",
//	 "nodes": [{"node", "cluster", "collector", "served", "acked", "nacks", "lastNack", "connected"}]}
//
// The control plane is another party: its answer is bounded
// (maxNodesAnswer), only the fields above are passed on, and a failure to
// reach it is reported in the answer (200), so that the collector's own
// part still shows.

// maxNodesAnswer bounds the control plane's answer.
const maxNodesAnswer = 4 << 20

// nodeFields are the fields of a node passed on from the control plane.
var nodeFields = []string{"node", "cluster", "collector", "served", "acked", "nacks", "lastNack", "connected"}

// versioned is a RuleSource that knows its version (xdsrules.Rules).
type versioned interface{ Version() string }

func (c *Collector) rulesStatus(w http.ResponseWriter, r *http.Request) {
	out := struct {
		Collector struct {
			Node    string `json:"node"`
			Version string `json:"version"`
		} `json:"collector"`
		ControlPlane string           `json:"controlplane"`
		Error        string           `json:"error,omitempty"`
		Nodes        []map[string]any `json:"nodes"`
	}{ControlPlane: "ok", Nodes: []map[string]any{}}
	out.Collector.Node = c.cfg.NodeID
	if v, ok := c.cfg.Rules.(versioned); ok {
		out.Collector.Version = v.Version()
	}
	if c.cfg.ControlPlaneURL == "" {
		out.ControlPlane = "not configured"
		writeJSON(w, http.StatusOK, out)
		return
	}
	nodes, err := c.fetchNodes(r)
	if err != nil {
		c.log.Warn("rules: reading the control plane's nodes", "url", c.cfg.ControlPlaneURL, "err", err)
		out.ControlPlane, out.Error = "unavailable", err.Error()
	} else {
		out.Nodes = nodes
	}
	writeJSON(w, http.StatusOK, out)
}

// fetchNodes reads the control plane's GET /v1/nodes.
func (c *Collector) fetchNodes(r *http.Request) ([]map[string]any, error) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, strings.TrimSuffix(c.cfg.ControlPlaneURL, "/")+"/v1/nodes", nil)
	if err != nil {
		return nil, fmt.Errorf("control plane URL: %w", err)
	}
	req.Header.Set("accept", "application/json")
	if len(c.cfg.ControlPlaneToken) > 0 {
		req.Header.Set("authorization", "Bearer "+string(c.cfg.ControlPlaneToken))
	}
	resp, err := c.controlPlane.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /v1/nodes: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/nodes: %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxNodesAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("GET /v1/nodes: reading: %w", err)
	}
	if len(data) > maxNodesAnswer {
		return nil, fmt.Errorf("GET /v1/nodes: answer over %d bytes", maxNodesAnswer)
	}
	return parseNodes(data)
}

// parseNodes reads the control plane's {"nodes": [...]}, keeping the
// fields of nodeFields with scalar values.
func parseNodes(data []byte) ([]map[string]any, error) {
	var in struct {
		Nodes []map[string]json.RawMessage `json:"nodes"`
	}
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, fmt.Errorf("GET /v1/nodes: decoding: %w", err)
	}
	out := make([]map[string]any, 0, len(in.Nodes))
	for _, n := range in.Nodes {
		m := map[string]any{}
		for _, f := range nodeFields {
			raw, ok := n[f]
			if !ok {
				continue
			}
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				continue
			}
			switch v.(type) {
			case string, float64, bool, nil:
				m[f] = v
			}
		}
		out = append(out, m)
	}
	return out, nil
}
