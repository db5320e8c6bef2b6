package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/hop"
	"github.com/asyncmesh/asyncmesh/internal/idempotency"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// Headers of the wire contract (docs/architecture.md).
const (
	hdrTraceID          = "x-async-trace-id"
	hdrRequestID        = "x-async-request-id"
	hdrRule             = "x-async-rule"
	hdrCallback         = "x-async-callback"
	hdrCallbackProtocol = "x-async-callback-protocol"
	hdrStatus           = "x-async-status"       // collector → filter only
	hdrAccessToken      = "x-async-access-token" // filter → caller, with a relayed result
	hdrIdempotent       = "x-async-idempotent"   // collector → filter, and filter → caller: the first request's answer
	asyncPrefix         = "x-async-"
)

type state uint8

const (
	statePassthrough state = iota // nothing more to do but tag the response
	stateBuffering                // async: collecting the body
	stateDispatched               // async: waiting for the collector
	stateAnswered                 // a local response was sent
)

// stream is the state of one HTTP stream. The pass-through path touches only
// req, traceID and state.
type stream struct {
	p       *plugin
	host    abi.Host
	state   state
	traceID string
	req     []abi.Header // the request headers as they arrived
	rp      *replayCheck // a replay whose headers passed (replay.go)

	// async only
	rule               *rules.Rule
	caller             *rules.Caller // recognized by Envoy's properties (identify); nil: anonymous
	principal          string
	callbackFromCaller bool
	callbackTarget     string
	orderKey           string // the rule's ordering key (ordering.go)
	requestID          string
	accessToken        string // handed to the caller once, in the 202; the envelope carries its hash
	idemKey            string // the caller's Idempotency-Key, parsed ("" without one)
	idemWindow         time.Duration
	tp                 trace.Parent // formatted only on the async path
	callback           rules.Callback
	wait               time.Duration
	preferAsync        bool
	method             string
	path               string
	authority          string
}

func (s *stream) OnRequestHeaders(_ int, endOfStream bool) abi.Action {
	h := s.host
	if s.p.cfg == nil {
		return abi.Continue
	}
	// One host call reads every header this stream looks at: each call, and
	// each value the host hands back (through proxy_on_memory_allocate), costs
	// a crossing into the VM, and the pass-through path must cost next to
	// nothing.
	s.req = h.Headers(abi.RequestHeaders)
	s.method = s.header(":method")
	s.path = s.header(":path")
	s.authority = s.header(":authority")

	tp, ok := trace.ParseParent(s.header("traceparent"))
	if !ok {
		tp = trace.NewParent()
		h.SetHeader(abi.RequestHeaders, "traceparent", tp.String())
	}
	s.tp = tp
	s.traceID = tp.TraceIDString()

	// Read what the caller may legitimately send before stripping the namespace.
	replayValue, isReplay := s.lookup(replay.Header)
	var replayID, cbURL, cbProto string
	if isReplay {
		replayID = s.header(hdrRequestID)
	}
	for _, kv := range s.req {
		n := kv[0]
		if !strings.HasPrefix(n, asyncPrefix) {
			continue
		}
		switch n {
		case hdrCallback:
			cbURL = s.header(n)
		case hdrCallbackProtocol:
			cbProto = s.header(n)
		}
		h.RemoveHeader(abi.RequestHeaders, n)
	}
	h.SetHeader(abi.RequestHeaders, hdrTraceID, s.traceID)

	if isReplay {
		return s.startReplay(replayValue, replayID, endOfStream) // replay.go
	}

	req := rules.Request{Authority: s.authority, Method: s.method, Path: s.path}
	if s.p.needsRoute {
		if v, err := h.Property("route_name"); err == nil {
			req.Route = string(v)
		}
	}
	var r *rules.Rule
	if s.p.cfg.RouteAnnotations {
		r = s.annotatedRule()
	}
	if r == nil {
		r = s.p.cfg.Match(req)
	}
	if r == nil || r.Mode == rules.ModeSync {
		return abi.Continue
	}
	s.preferAsync, s.wait = parsePrefer(s.header("prefer"))
	if r.Mode == rules.ModeOptIn && !s.preferAsync {
		return abi.Continue
	}
	return s.startAsync(r, cbURL, cbProto, endOfStream)
}

// routeAnnotationPath is where Envoy (1.40, checked by e2e) exposes a route's
// filter_metadata["asyncmesh"] to Wasm: a string map in proxy-wasm pairs form.
// (xds.route_metadata alone is the serialized Metadata proto, and one more
// element reads a single value.)
var routeAnnotationPath = []string{"xds", "route_metadata", "filter_metadata", "asyncmesh"}

// annotatedRule returns the rule the route's annotation selects, or nil.
func (s *stream) annotatedRule() *rules.Rule {
	raw, err := s.host.Property(routeAnnotationPath...)
	if err != nil || len(raw) == 0 {
		return nil // not annotated
	}
	pairs, err := abi.DecodeHeaders(raw)
	if err != nil {
		s.host.Log(abi.LogWarn, "asyncmesh: route annotation unreadable: "+err.Error())
		return nil
	}
	kv := make([][2]string, len(pairs))
	for i, p := range pairs {
		kv[i] = [2]string(p)
	}
	r, err := s.p.cfg.Annotated(kv)
	if err != nil {
		s.host.Log(abi.LogWarn, "asyncmesh: "+err.Error()+"; matching by rules instead")
		return nil
	}
	return r
}

// startAsync validates the caller's callback choice and the body size, then
// dispatches at once (no body) or starts buffering.
func (s *stream) startAsync(r *rules.Rule, cbURL, cbProto string, endOfStream bool) abi.Action {
	s.rule = r
	s.callback = r.Callback
	if len(s.p.cfg.Callers) > 0 {
		s.caller, s.principal = s.identify()
	}
	if err := r.CheckCaller(s.caller); err != nil {
		return s.reject(403, "caller_not_allowed", err.Error())
	}
	if cbURL != "" || cbProto != "" {
		if !r.Callback.AllowOverride {
			return s.reject(400, "callback_override_not_allowed", hdrCallback+": rule "+r.Name+" does not let the caller choose the callback")
		}
		s.callbackFromCaller = true
		if cbURL != "" {
			s.callback.URL = cbURL
		}
		if cbProto != "" {
			if err := rules.CheckProtocol(cbProto); err != nil {
				return s.reject(400, "bad_callback", hdrCallbackProtocol+": "+err.Error())
			}
			s.callback.Protocol = cbProto
		}
		if s.callback.URL != "" {
			if err := rules.CheckCallbackURLFor(s.callback.Protocol, s.callback.URL); err != nil {
				return s.reject(400, "bad_callback", hdrCallback+": "+err.Error())
			}
			if err := r.Callback.CheckCallerURL(s.callback.URL); err != nil {
				return s.reject(400, "callback_not_allowed", hdrCallback+": "+err.Error())
			}
			if err := s.caller.CheckCallerHost(s.callback.URL); err != nil {
				return s.reject(400, "callback_not_allowed", hdrCallback+": "+err.Error())
			}
		}
		// A caller's callback never borrows the rule's broker credentials
		// or receiver auth, nor its private-network allowances outside
		// callback.allowedHosts (the collector applies the same again).
		s.callback = s.callback.ForCaller()
	}
	if sel := r.Callback.Select; sel != nil && sel.JSONField == "" {
		var v string
		var ok bool
		if sel.Header != "" {
			v, ok = s.lookup(sel.Header)
		} else {
			v, ok = rules.QueryValue(s.path, sel.Query)
		}
		if !s.pick(sel, v, ok) {
			return abi.Pause
		}
	}
	if o := r.Ordering; o != nil && o.JSONField == "" {
		if v, ok := s.orderParam(o); !s.orderBy(o, v, ok) {
			return abi.Pause
		}
	}
	if s.callback.URL == "" && s.callback.Select == nil {
		return s.reject(400, "callback_required", hdrCallback+": rule "+r.Name+" needs the caller to name a callback URL")
	}
	if cl := s.header("content-length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return s.reject(400, "bad_content_length", "content-length: not a number")
		}
		if n > r.BodyLimit {
			return s.tooLarge()
		}
	}
	if w := r.Idempotency(); w > 0 {
		if a := s.idempotencyKey(w); a != abi.Continue {
			return a
		}
	}
	s.requestID = trace.NewRequestID()
	if s.idemKey != "" && len(s.p.replaySecrets) > 0 {
		// Derived, not drawn, so that a retry with the same key can be
		// handed the same token again (replayedAnswer) without the token
		// being stored anywhere.
		s.accessToken, _ = access.DeriveToken(s.p.replaySecrets[0], s.requestID)
	} else {
		s.accessToken, _ = access.NewToken()
	}
	if endOfStream {
		s.dispatch(nil)
		return abi.Pause
	}
	s.state = stateBuffering
	if s.p.cfg.HoldHeaders {
		return abi.Pause // StopIteration: the body still comes to this filter
	}
	// Without holdHeaders (Envoy not configured with
	// allow_on_headers_stop_iteration), ABI 0.2.x turns a paused header callback into
	// StopAllIterationAndWatermark, which withholds the body from this filter
	// too. So the headers continue, and the envoy.filters.http.buffer filter placed
	// right after this one in the chain holds them back from the router while this
	// filter buffers the body (Pause in OnRequestBody) and decides.
	return abi.Continue
}

func (s *stream) OnRequestBody(size int, endOfStream bool) abi.Action {
	if s.rp != nil {
		return s.replayBody(size, endOfStream)
	}
	if s.state != stateBuffering {
		if s.state == statePassthrough {
			return abi.Continue
		}
		return abi.Pause
	}
	if int64(size) > s.rule.BodyLimit {
		s.tooLarge()
		return abi.Pause
	}
	if !endOfStream {
		return abi.Pause // StopIterationAndBuffer: Envoy keeps the body
	}
	var body []byte
	if size > 0 {
		b, err := s.host.Buffer(abi.RequestBody, 0, size)
		if err != nil {
			s.host.Log(abi.LogError, "asyncmesh: reading request body: "+err.Error())
			return s.reject(500, "body_unreadable", "the request body could not be read")
		}
		body = b
	}
	s.dispatch(body)
	return abi.Pause
}

// idempotencyKey reads the caller's Idempotency-Key, on a rule that keeps
// keys for window: Continue when there is none or it is valid (then set),
// Pause after answering 400.
func (s *stream) idempotencyKey(window time.Duration) abi.Action {
	var v string
	n := 0
	for _, kv := range s.req {
		if kv[0] == idempotency.Header {
			v = kv[1]
			n++
		}
	}
	switch {
	case n == 0:
		return abi.Continue
	case n > 1:
		return s.reject(400, "bad_idempotency_key", "Idempotency-Key: sent more than once; send one key")
	}
	k, err := idempotency.ParseKey(v)
	if err != nil {
		return s.reject(400, "bad_idempotency_key", "Idempotency-Key: "+err.Error())
	}
	s.idemKey, s.idemWindow = k, window
	return abi.Continue
}

// jwtAuthn is the dynamic metadata namespace of Envoy's jwt_authn filter.
const jwtAuthn = "envoy.filters.http.jwt_authn"

// identify recognizes the caller from what Envoy established, never from a
// header: the peer certificate's URI SAN (the mesh's mutual TLS) and the
// claims of a JWT that jwt_authn verified. Only the properties some caller
// is declared by are read (each read is a host call).
func (s *stream) identify() (*rules.Caller, string) {
	var san, iss, sub string
	if s.p.callerSANs {
		if v, err := s.host.Property("connection", "uri_san_peer_certificate"); err == nil {
			san = string(v)
		}
	}
	if s.p.callerJWTs {
		key := s.p.cfg.JWTPayloadKey
		if v, err := s.host.Property("metadata", "filter_metadata", jwtAuthn, key, "iss"); err == nil {
			iss = string(v)
		}
		if iss != "" {
			if v, err := s.host.Property("metadata", "filter_metadata", jwtAuthn, key, "sub"); err == nil {
				sub = string(v)
			}
		}
	}
	return s.p.cfg.Identify(san, iss, sub)
}

// pick sets the callback target that a request parameter selects, or answers
// 400 and returns false.
func (s *stream) pick(sel *rules.Select, value string, present bool) bool {
	key, cb, err := sel.Pick(value, present)
	if err != nil {
		s.reject(400, "unknown_callback_target", err.Error())
		return false
	}
	s.callback, s.callbackTarget = cb, key
	return true
}

// externalTarget is the rule's target when it is external: the envelope
// carries only that (internal is the default).
func (s *stream) externalTarget() *rules.Target {
	if s.rule.Target.External() {
		return s.rule.Target
	}
	return nil
}

// dispatch hands the request to the collector.
func (s *stream) dispatch(body []byte) {
	if sel := s.callback.Select; sel != nil { // selected by a body field
		v, ok := rules.JSONFieldValue(body, sel.JSONField)
		if !s.pick(sel, v, ok) {
			return
		}
	}
	if o := s.rule.Ordering; o != nil && o.JSONField != "" { // ordered by a body field
		if v, ok := rules.JSONFieldValue(body, o.JSONField); !s.orderBy(o, v, ok) {
			return
		}
	}
	s.state = stateDispatched
	env := envelope.Envelope{
		Version:            envelope.Version,
		ID:                 s.requestID,
		TraceID:            s.traceID,
		TraceParent:        s.tp.String(),
		XRequestID:         s.header("x-request-id"),
		Rule:               s.rule.Name,
		Caller:             s.caller.NameOrEmpty(),
		Package:            s.rule.Package,
		Principal:          s.principal,
		AccessHash:         access.Hash(s.accessToken),
		Method:             s.method,
		Scheme:             s.header(":scheme"),
		Authority:          s.authority,
		Path:               s.path,
		Headers:            forwardable(s.host.Headers(abi.RequestHeaders)),
		Body:               body,
		Callback:           s.callback.WithCaller(s.caller),
		CallbackFromCaller: s.callbackFromCaller,
		CallbackTarget:     s.callbackTarget,
		Retry:              s.rule.Retry,
		Target:             s.externalTarget(),
		Timeout:            s.rule.Timeout,
		Wait:               rules.Duration(s.wait),
	}
	env.OrderKey = s.orderKey
	if s.idemKey != "" {
		env.IdempotencyKey, env.IdempotencyWindow = s.idemKey, rules.Duration(s.idemWindow)
	}
	cfg := s.p.cfg
	timeout := cfg.CollectorTimeout.D() + s.wait
	// The collector must not make the request runnable once this filter has
	// stopped waiting for it (then the caller is told 503, or served
	// synchronously).
	env.Deadline = time.Now().Add(timeout).UnixMilli()
	data, err := json.Marshal(&env)
	if err != nil {
		s.collectorDown("encoding envelope: " + err.Error())
		return
	}
	hs := []abi.Header{
		{":method", "POST"},
		{":path", "/v1/intake"},
		{":authority", cfg.CollectorAuthority},
		{"content-type", "application/json"},
		{hdrTraceID, s.traceID},
		{"traceparent", env.TraceParent},
	}
	if s.caller != nil {
		// The collector takes a caller's name only from a signed envelope
		// (replay.IntakeHeader).
		if len(s.p.replaySecrets) == 0 {
			s.reject(503, "no_replay_secret", "this sidecar cannot vouch for the caller it recognized: its replay secret is not set")
			return
		}
		hs = append(hs, abi.Header{replay.IntakeHeader, replay.SignIntake(s.p.replaySecrets[0], data)})
	}
	_, err = s.host.HTTPCall(cfg.CollectorCluster, hs, data, uint32(timeout.Milliseconds()))
	if err != nil {
		s.collectorDown("dispatch_http_call: " + err.Error())
	}
}

func (s *stream) OnHTTPCallResponse(_ uint32, numHeaders, bodySize, _ int) {
	if s.state != stateDispatched {
		return
	}
	if numHeaders == 0 {
		s.collectorDown("no answer (reset or timeout)")
		return
	}
	status, _ := s.host.Header(abi.HTTPCallResponseHeaders, ":status")
	intakeStatus := s.headerOf(abi.HTTPCallResponseHeaders, hdrStatus)
	// (Before the relayed result: the first request's status may be
	// completed, but its answer is a 202 all the same.)
	if status == "200" && s.headerOf(abi.HTTPCallResponseHeaders, hdrIdempotent) == idempotentReplay {
		s.replayedAnswer(bodySize)
		return
	}
	if intakeStatus == "completed" {
		s.relayResult(status, bodySize)
		return
	}
	switch status {
	case "200", "201", "202":
		s.accepted(s.requestID, s.traceID, intakeStatus, s.accessToken, nil)
	case "400", "413", "409", "422":
		body, _ := s.host.Buffer(abi.HTTPCallResponseBody, 0, bodySize)
		var hs []abi.Header
		switch status {
		case "409": // only an Idempotency-Key's (intake's id conflict is the filter's own fault)
			if !strings.Contains(string(body), `"idempotency_key_in_progress"`) {
				s.collectorDown("collector answered 409")
				return
			}
			hs = []abi.Header{{"retry-after", "1"}}
		case "422":
			if !strings.Contains(string(body), `"idempotency_key_reused"`) {
				s.collectorDown("collector answered 422")
				return
			}
		}
		code, _ := strconv.Atoi(status)
		s.send(code, "asyncmesh_intake_refused", body, hs)
	default:
		s.collectorDown("collector answered " + status)
	}
}

// accepted answers 202 with the wire contract's headers and body, for
// request id (traceID: its trace) and its access token; extra headers
// follow.
func (s *stream) accepted(id, traceID, status, token string, extra []abi.Header) {
	if status == "" {
		status = "persisted"
	}
	// The Location carries the access token: it is the one place the caller
	// learns it, and it makes the Location dereferenceable as it is.
	loc := s.p.cfg.StatusPrefix + "/v1/requests/" + id
	var body []byte
	if token != "" {
		loc += "?" + access.Param + "=" + token
		body, _ = json.Marshal(struct {
			ID          string `json:"id"`
			TraceID     string `json:"traceId"`
			Status      string `json:"status"`
			StatusURL   string `json:"statusUrl"`
			AccessToken string `json:"accessToken"`
		}{id, traceID, status, loc, token})
	} else {
		body, _ = json.Marshal(struct {
			ID                     string `json:"id"`
			TraceID                string `json:"traceId"`
			Status                 string `json:"status"`
			StatusURL              string `json:"statusUrl"`
			AccessTokenUnavailable string `json:"accessTokenUnavailable"`
		}{id, traceID, status, loc, tokenUnavailable})
	}
	hs := append([]abi.Header{{"location", loc}, {hdrRequestID, id}, {hdrRule, s.rule.Name}}, extra...)
	if s.preferAsync {
		hs = append(hs, abi.Header{"preference-applied", "respond-async"})
	}
	s.send(202, "asyncmesh_accepted", body, hs)
}

// idempotentReplay is x-async-idempotent's value on the first request's
// answer to a retry with the same Idempotency-Key.
const idempotentReplay = "replayed"

// tokenUnavailable explains a replayed 202 without a token.
const tokenUnavailable = "the first request's access token cannot be issued again (it was not derived under a replay secret this filter still has); the first 202's Location holds it"

// replayedAnswer answers a retry with an Idempotency-Key with the first
// request's 202: the collector answered with that request's id, trace id,
// status and access-token hash, and the token is the one derived from the
// id under whichever of the filter's replay secrets gives that hash (the
// first request's may be the previous secret, during a rotation). So the
// caller gets the same Location and body. A token minted under a secret
// since dropped (or drawn at random, without a secret) cannot be derived
// again: the 202 then has a Location without it and says so.
func (s *stream) replayedAnswer(bodySize int) {
	body, err := s.host.Buffer(abi.HTTPCallResponseBody, 0, bodySize)
	var first struct {
		ID         string `json:"id"`
		TraceID    string `json:"traceId"`
		Status     string `json:"status"`
		AccessHash string `json:"accessHash"`
	}
	if err == nil {
		err = json.Unmarshal(body, &first)
	}
	if err != nil || !trace.ValidRequestID(first.ID) || !trace.ValidTraceID(first.TraceID) {
		s.collectorDown("collector's idempotent answer is unreadable")
		return
	}
	token := ""
	for _, secret := range s.p.replaySecrets {
		if t, h := access.DeriveToken(secret, first.ID); first.AccessHash != "" && h == first.AccessHash {
			token = t
			break
		}
	}
	s.host.Log(abi.LogInfo, "asyncmesh: Idempotency-Key retry on rule "+s.rule.Name+" answered with request "+first.ID+" (trace "+s.traceID+")")
	s.accepted(first.ID, first.TraceID, first.Status, token, []abi.Header{{hdrIdempotent, idempotentReplay}})
}

// relayResult answers with the service's own response, which the collector
// returned because the request completed within the caller's Prefer: wait.
func (s *stream) relayResult(status string, bodySize int) {
	code, err := strconv.Atoi(status)
	if err != nil || code < 200 || code > 599 {
		s.collectorDown("collector relayed a bad status " + status)
		return
	}
	var body []byte
	if bodySize > 0 {
		if body, err = s.host.Buffer(abi.HTTPCallResponseBody, 0, bodySize); err != nil {
			s.collectorDown("reading the relayed response: " + err.Error())
			return
		}
	}
	hs := []abi.Header{{hdrRequestID, s.requestID}, {hdrTraceID, s.traceID}, {hdrRule, s.rule.Name}, {hdrAccessToken, s.accessToken}}
	for _, h := range s.host.Headers(abi.HTTPCallResponseHeaders) {
		switch k := h[0]; {
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, asyncPrefix), hop.ByHop(k), k == "date", k == "server":
		default:
			hs = append(hs, h)
		}
	}
	s.state = stateAnswered
	if err := s.host.SendLocalResponse(code, "asyncmesh_completed_within_wait", body, hs); err != nil {
		s.host.Log(abi.LogError, "asyncmesh: send_local_response: "+err.Error())
	}
}

// collectorDown applies the rule's onCollectorDown: serve synchronously, or 503.
func (s *stream) collectorDown(reason string) {
	s.host.Log(abi.LogWarn, "asyncmesh: collector unavailable for rule "+s.rule.Name+" (trace "+s.traceID+"): "+reason)
	if s.rule.OnCollectorDown == rules.CollectorDownPassthrough {
		s.state = statePassthrough
		if err := s.host.ContinueStream(abi.StreamRequest); err != nil {
			s.host.Log(abi.LogError, "asyncmesh: continue_stream: "+err.Error())
		}
		return
	}
	s.reject(503, "collector_unavailable", "the async collector is unavailable; retry later")
}

func (s *stream) tooLarge() abi.Action {
	return s.reject(413, "body_too_large", "request body exceeds the limit of rule "+s.rule.Name+" ("+strconv.FormatInt(s.rule.BodyLimit, 10)+" bytes)")
}

// reject sends a JSON error as a local response.
func (s *stream) reject(status int, code, msg string) abi.Action {
	body, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
		TraceID string `json:"traceId"`
	}{code, msg, s.traceID})
	var hs []abi.Header
	if status == 503 {
		hs = []abi.Header{{"retry-after", "5"}}
	}
	s.send(status, "asyncmesh_"+code, body, hs)
	return abi.Pause
}

func (s *stream) send(status int, details string, body []byte, extra []abi.Header) {
	s.state = stateAnswered
	hs := append([]abi.Header{{"content-type", "application/json"}, {hdrTraceID, s.traceID}}, extra...)
	if err := s.host.SendLocalResponse(status, details, body, hs); err != nil {
		s.host.Log(abi.LogError, "asyncmesh: send_local_response: "+err.Error())
	}
}

func (s *stream) OnResponseHeaders(int, bool) abi.Action {
	s.stripReplayMarker()
	// A local response of this filter (send) carries the trace id already.
	if s.traceID != "" && s.state != stateAnswered {
		s.host.SetHeader(abi.ResponseHeaders, hdrTraceID, s.traceID)
	}
	return abi.Continue
}

// header is the first value of a request header as the caller sent it (the
// snapshot taken on arrival; the filter's own changes are not in it).
func (s *stream) header(name string) string {
	v, _ := s.lookup(name)
	return v
}

func (s *stream) lookup(name string) (string, bool) {
	for _, kv := range s.req {
		if kv[0] == name {
			return kv[1], true
		}
	}
	return "", false
}

func (s *stream) headerOf(m abi.MapType, name string) string {
	v, _ := s.host.Header(m, name)
	return v
}

// forwardable drops pseudo, hop-by-hop and length headers: the replay recomputes
// them. The x-async-* namespace was already stripped, and x-async-trace-id is
// re-added by the filter on the replay.
func forwardable(hs []abi.Header) [][2]string {
	out := make([][2]string, 0, len(hs))
	for _, h := range hs {
		switch k := h[0]; {
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, asyncPrefix), hop.ByHop(k), k == "expect":
		default:
			out = append(out, h)
		}
	}
	return out
}

// parsePrefer reads RFC 7240 preferences: respond-async and wait=N (seconds).
func parsePrefer(v string) (respondAsync bool, wait time.Duration) {
	for _, part := range strings.Split(v, ",") {
		pref, _, _ := strings.Cut(part, ";")
		name, val, _ := strings.Cut(strings.TrimSpace(pref), "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "respond-async":
			respondAsync = true
		case "wait":
			if n, err := strconv.Atoi(strings.Trim(strings.TrimSpace(val), `"`)); err == nil && n > 0 {
				wait = min(time.Duration(min(n, 3600))*time.Second, envelope.MaxWait)
			}
		}
	}
	return respondAsync, wait
}

func itoa(n int) string { return strconv.Itoa(n) }
