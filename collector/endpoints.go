package collector

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// The operator's endpoint API (health.go keeps the health):
//
//	GET  /v1/endpoints[?disabled=true&after=ID&limit=N]  endpoints by id, with health
//	GET  /v1/endpoints/{id}
//	POST /v1/endpoints/{id}/enable    enable; its held deliveries resume, oldest first
//	POST /v1/endpoints/{id}/disable   disable; its deliveries are held from the next one

// endpointView is the API's rendering of an endpoint. Held, for a
// disabled endpoint, counts its held deliveries (absent for an enabled one,
// which holds none but those its enabling is resuming, and when the store
// cannot count).
type endpointView struct {
	*store.Endpoint
	SuccessRatio float64 `json:"successRatio"`
	Held         *int64  `json:"held,omitempty"`
}

func (c *Collector) viewOfEndpoint(ctx context.Context, e *store.Endpoint) endpointView {
	v := endpointView{Endpoint: e, SuccessRatio: e.SuccessRatio()}
	if counter, ok := c.store.(store.Counter); ok && e.Disabled {
		n, err := counter.Count(ctx, store.Query{Status: store.Held, Endpoint: e.ID})
		if err != nil {
			c.log.Warn("endpoints: counting held deliveries", "endpoint", e.ID, "err", err)
		} else {
			v.Held = &n
		}
	}
	return v
}

// endpointsAPI reports (answering 404 when it does not) whether the store
// keeps endpoint health.
func (c *Collector) endpointsAPI(w http.ResponseWriter) bool {
	if c.health.eps == nil {
		writeError(w, http.StatusNotFound, "not_found", "this store keeps no endpoint health")
		return false
	}
	return true
}

func (c *Collector) listEndpoints(w http.ResponseWriter, r *http.Request) {
	if !c.endpointsAPI(w) {
		return
	}
	q := store.EndpointQuery{After: r.URL.Query().Get("after")}
	switch v := r.URL.Query().Get("disabled"); v {
	case "", "false":
	case "true":
		q.DisabledOnly = true
	default:
		writeError(w, http.StatusBadRequest, "bad_query", "disabled: want true or false, got "+strconv.Quote(v))
		return
	}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxLimit {
			writeError(w, http.StatusBadRequest, "bad_query", "limit: want 1 to "+strconv.Itoa(store.MaxLimit))
			return
		}
		q.Limit = n
	}
	eps, err := c.health.eps.ListEndpoints(r.Context(), q)
	if err != nil {
		c.log.Error("endpoints: listing", "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the endpoints could not be read")
		return
	}
	out := struct {
		Endpoints []endpointView `json:"endpoints"`
		Next      string         `json:"next,omitempty"`
	}{Endpoints: []endpointView{}}
	for _, e := range eps {
		out.Endpoints = append(out.Endpoints, c.viewOfEndpoint(r.Context(), e))
	}
	if limit := cmp.Or(q.Limit, store.MaxLimit); len(eps) > 0 && len(eps) == limit { // a full page: maybe more
		out.Next = eps[len(eps)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

func (c *Collector) getEndpoint(w http.ResponseWriter, r *http.Request) {
	if !c.endpointsAPI(w) {
		return
	}
	e, err := c.health.eps.GetEndpoint(r.Context(), r.PathValue("id"))
	c.writeEndpoint(w, r, e, err, 0)
}

func (c *Collector) setEndpoint(enabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !c.endpointsAPI(w) {
			return
		}
		id := r.PathValue("id")
		e, err := c.health.setEnabled(r.Context(), id, enabled)
		resumed := 0
		if err == nil && enabled {
			resumed, err = c.resumeHeld(r.Context(), id)
		}
		c.writeEndpoint(w, r, e, err, resumed)
	}
}

func (c *Collector) writeEndpoint(w http.ResponseWriter, r *http.Request, e *store.Endpoint, err error, resumed int) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no endpoint "+r.PathValue("id")+" (an endpoint exists once a callback was attempted at it)")
	case err != nil:
		c.log.Error("endpoints: "+r.Method+" "+r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the endpoint could not be read or written")
	case r.Method == http.MethodPost:
		writeJSON(w, http.StatusOK, struct {
			endpointView
			Resumed int `json:"resumed"`
		}{c.viewOfEndpoint(r.Context(), e), resumed})
	default:
		writeJSON(w, http.StatusOK, c.viewOfEndpoint(r.Context(), e))
	}
}

// resumeHeld moves the held deliveries of endpoint id back to delivering,
// oldest first (ids are in acceptance order), each with its delivery
// message. A held record names its endpoint (store.Record.Endpoint, set by
// Hold), so only this endpoint's held records are read.
func (c *Collector) resumeHeld(ctx context.Context, id string) (int, error) {
	n := 0
	q := store.Query{Status: store.Held, Endpoint: id, Limit: store.MaxLimit}
	for {
		page, err := c.store.Search(ctx, q)
		if err != nil {
			return n, err
		}
		for _, rec := range page.Records {
			if _, err := c.advance(ctx, rec, store.Change{Event: store.Unhold, Detail: "endpoint enabled"}); err != nil && !store.IsConflict(err) {
				return n, err
			}
			n++
		}
		if page.Next == "" {
			return n, nil
		}
		q.Cursor = page.Next
	}
}
