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

// endpointView is the API's rendering of an endpoint.
type endpointView struct {
	*store.Endpoint
	SuccessRatio float64 `json:"successRatio"`
}

func viewOfEndpoint(e *store.Endpoint) endpointView {
	return endpointView{Endpoint: e, SuccessRatio: e.SuccessRatio()}
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
		out.Endpoints = append(out.Endpoints, viewOfEndpoint(e))
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
		}{viewOfEndpoint(e), resumed})
	default:
		writeJSON(w, http.StatusOK, viewOfEndpoint(e))
	}
}

// resumeHeld moves the held deliveries of endpoint id back to delivering,
// oldest first (ids are in acceptance order), each with its delivery
// message. Held records are found by status and matched to the endpoint
// here, page by page: the work is linear in the held records of all
// endpoints, which a store that indexed records by endpoint would avoid.
func (c *Collector) resumeHeld(ctx context.Context, id string) (int, error) {
	n := 0
	q := store.Query{Status: store.Held, Limit: store.MaxLimit}
	for {
		page, err := c.store.Search(ctx, q)
		if err != nil {
			return n, err
		}
		for _, rec := range page.Records {
			if rec.Envelope == nil || endpointOf(c.applyRules(rec.Envelope)) != id {
				continue
			}
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
