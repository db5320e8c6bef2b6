// Command receiver is the demo's callback receiver, for every callback
// protocol: it verifies each callback's Standard Webhooks signature, prints what
// it got, and lists what it received at GET /received (for the demo and the
// end-to-end tests).
//
//	POST /callbacks   an http callback (401 when the signature does not verify)
//	POST /soap        a soap callback (a SOAP fault when it does not verify)
//	-grpc-listen      the gRPC Callback service (client/callbackpb)
//	-amqp-url-env     consume amqp callbacks published to amq.topic with
//	                  routing key -amqp-binding
//	GET  /received    every callback so far, in order (?since=N: from the N+1th on)
//	POST /stall?for=5s   fault injection: for that long, callbacks hang up
//	                     to 2 s and are then refused with 503 + Retry-After: 1
//	POST /throttle?traceId=…&retryAfter=85s&times=1
//	                     fault injection for one request only: the next times
//	                     http callbacks of that trace id are refused at once with
//	                     503 + Retry-After (whole seconds); others are untouched
package main

import (
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Received is one callback as the receiver saw it.
type Received struct {
	Protocol  string    `json:"protocol"`
	WebhookID string    `json:"webhookId"`
	TraceID   string    `json:"traceId"`
	Verified  bool      `json:"verified"`
	URI       string    `json:"uri,omitempty"` // http: path and query the callback was sent to
	At        time.Time `json:"at"`
	// Answered is when the receiver answered an http callback 2xx (just
	// before its acknowledgement; zero for other protocols): a fault test
	// checks that a key's next callback did not start before it.
	Answered time.Time       `json:"answered,omitzero"`
	Body     json.RawMessage `json:"body"` // the payload as JSON (soap: decoded from the envelope)
}

// receiver keeps what arrived.
type receiver struct {
	secrets []webhook.Secret
	mu      sync.Mutex
	got     []Received
	stalled time.Time // until then, callbacks are refused
	// throttled holds, by trace id, the callbacks still to refuse with a
	// Retry-After (POST /throttle).
	throttled map[string]throttle
}

type throttle struct {
	retryAfter time.Duration
	times      int
}

// throttle reports whether a callback of traceID must be refused, and with
// which Retry-After, spending one of the refusals asked for.
func (rc *receiver) throttle(traceID string) (time.Duration, bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	th, ok := rc.throttled[traceID]
	if !ok {
		return 0, false
	}
	if th.times--; th.times <= 0 {
		delete(rc.throttled, traceID)
	} else {
		rc.throttled[traceID] = th
	}
	return th.retryAfter, true
}

// stall holds a callback while the receiver is stalled and reports whether
// it must be refused.
func (rc *receiver) stall() bool {
	rc.mu.Lock()
	until := rc.stalled
	rc.mu.Unlock()
	if time.Now().After(until) {
		return false
	}
	time.Sleep(min(time.Until(until), 2*time.Second))
	return true
}

// accept verifies a callback's signature over body and records it with
// payload (the JSON form of the callback).
func (rc *receiver) accept(protocol string, h http.Header, body, payload []byte, uri string) error {
	_, err := rc.acceptAt(protocol, h, body, payload, uri)
	return err
}

// acceptAt is accept, and returns the callback's index in what was received.
func (rc *receiver) acceptAt(protocol string, h http.Header, body, payload []byte, uri string) (int, error) {
	rec := Received{Protocol: protocol, WebhookID: h.Get(webhook.HeaderID), TraceID: h.Get("x-async-trace-id"), URI: uri, At: time.Now()}
	if err := webhook.Verify(h, body, rc.secrets, time.Now()); err != nil {
		slog.Warn("receiver: refused callback", "protocol", protocol, "webhook_id", rec.WebhookID, "err", err)
		return -1, err
	}
	rec.Verified = true
	if json.Valid(payload) {
		rec.Body = payload
	}
	rc.mu.Lock()
	rc.got = append(rc.got, rec)
	i := len(rc.got) - 1
	rc.mu.Unlock()
	fmt.Printf("receiver: verified %s callback webhook-id=%s trace=%s body=%s\n", protocol, rec.WebhookID, rec.TraceID, payload)
	return i, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "HTTP listen address (http and soap callbacks)")
	grpcListen := flag.String("grpc-listen", "", "gRPC listen address (grpc callbacks); empty: none")
	amqpURLEnv := flag.String("amqp-url-env", "", "environment variable holding the RabbitMQ URL to consume amqp callbacks from; empty: none")
	amqpBinding := flag.String("amqp-binding", "asyncmesh.callbacks", "routing key bound on amq.topic for amqp callbacks")
	secretEnv := flag.String("secret-env", "ASYNCMESH_SECRET_DEMO", "environment variable holding the whsec_ secret")
	flag.Parse()
	rc := &receiver{throttled: map[string]throttle{}}
	for _, s := range strings.Fields(os.Getenv(*secretEnv)) {
		sec, err := webhook.ParseSecret(s)
		if err != nil {
			fail("-secret-env", err)
		}
		rc.secrets = append(rc.secrets, sec)
	}
	if *grpcListen != "" {
		if err := serveGRPC(*grpcListen, rc); err != nil {
			fail("-grpc-listen", err)
		}
	}
	if *amqpURLEnv != "" {
		if err := consumeAMQP(os.Getenv(*amqpURLEnv), *amqpBinding, rc); err != nil {
			fail("-amqp-url-env", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /stall", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("for"))
		if err != nil || d < 0 || d > 10*time.Minute {
			http.Error(w, "for: want a duration up to 10m", http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		rc.stalled = time.Now().Add(d)
		rc.mu.Unlock()
		slog.Info("receiver: stalled", "for", d)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /throttle", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		traceID := q.Get("traceId")
		d, err := time.ParseDuration(q.Get("retryAfter"))
		times, terr := strconv.Atoi(q.Get("times"))
		if q.Get("times") == "" {
			times, terr = 1, nil
		}
		switch {
		case len(traceID) != 32:
			http.Error(w, "traceId: want the 32 hex digits of a trace id", http.StatusBadRequest)
		case err != nil || d < time.Second || d > 10*time.Minute || d%time.Second != 0:
			http.Error(w, "retryAfter: want whole seconds from 1s to 10m", http.StatusBadRequest)
		case terr != nil || times < 1 || times > 100:
			http.Error(w, "times: want 1 to 100", http.StatusBadRequest)
		default:
			rc.mu.Lock()
			if len(rc.throttled) >= 10000 {
				rc.mu.Unlock()
				http.Error(w, "too many throttles", http.StatusTooManyRequests)
				return
			}
			rc.throttled[strings.ToLower(traceID)] = throttle{retryAfter: d, times: times}
			rc.mu.Unlock()
			slog.Info("receiver: throttling", "trace_id", traceID, "retry_after", d, "times", times)
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /callbacks", func(w http.ResponseWriter, r *http.Request) {
		if d, ok := rc.throttle(strings.ToLower(r.Header.Get("x-async-trace-id"))); ok {
			slog.Info("receiver: throttled callback", "webhook_id", r.Header.Get("webhook-id"), "retry_after", d)
			w.Header().Set("retry-after", strconv.Itoa(int(d/time.Second)))
			http.Error(w, "throttled", http.StatusServiceUnavailable)
			return
		}
		if rc.stall() {
			w.Header().Set("retry-after", "1")
			http.Error(w, "stalled", http.StatusServiceUnavailable)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		i, err := rc.acceptAt("http", r.Header, body, body, r.URL.RequestURI())
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		// Noted just before the answer: no callback that follows it can
		// have started before this time.
		rc.mu.Lock()
		rc.got[i].Answered = time.Now()
		rc.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /soap", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		var p delivery.Payload
		if err == nil {
			p, err = delivery.DecodeSOAP(body)
		}
		var payload []byte
		if err == nil {
			payload, err = json.Marshal(p)
		}
		if err == nil {
			err = rc.accept("soap", r.Header, body, payload, r.URL.RequestURI())
		}
		w.Header().Set("content-type", "text/xml; charset=utf-8")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, `<?xml version="1.0"?><soap:Envelope xmlns:soap="%s"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>%s</faultstring></soap:Fault></soap:Body></soap:Envelope>`,
				delivery.NamespaceSOAPEnvelope, xmlEscape(err.Error()))
			return
		}
		fmt.Fprintf(w, `<?xml version="1.0"?><soap:Envelope xmlns:soap="%s"><soap:Body><DeliverResponse xmlns="%s"/></soap:Body></soap:Envelope>`,
			delivery.NamespaceSOAPEnvelope, delivery.NamespaceSOAP)
	})
	mux.HandleFunc("GET /received", func(w http.ResponseWriter, r *http.Request) {
		since := 0
		if v := r.URL.Query().Get("since"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				http.Error(w, "since: want a non-negative number", http.StatusBadRequest)
				return
			}
			since = n
		}
		// Copied under the lock, encoded outside it: a long list must not
		// hold back the callbacks being received meanwhile.
		rc.mu.Lock()
		got := append([]Received{}, rc.got[min(since, len(rc.got)):]...)
		rc.mu.Unlock()
		w.Header().Set("content-type", "application/json")
		_ = json.NewEncoder(w).Encode(got)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	slog.Info("receiver: listening", "addr", *listen, "grpc", *grpcListen, "amqp", *amqpURLEnv != "", "secrets", len(rc.secrets))
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fail("listen", err)
	}
}

func fail(what string, err error) {
	fmt.Fprintln(os.Stderr, "receiver:", what+":", err)
	os.Exit(1)
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
