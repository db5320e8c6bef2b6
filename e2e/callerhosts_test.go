//go:build e2e

package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestCallerCallbackHosts: through the real Envoy, a caller may point the
// slow-report rule's callback only at the hosts its callback.allowedHosts
// lists (127.0.0.1 in examples/rules.yaml): the metadata address, another
// loopback name or a private address are answered 400 naming
// x-async-callback, and a listed host is accepted and called back, the
// rule's loopback allowance applying because the host is listed.
func TestCallerCallbackHosts(t *testing.T) {
	port := st.ReceiverURL[strings.LastIndexByte(st.ReceiverURL, ':')+1:]
	for _, cb := range []string{
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://localhost:" + port + "/callbacks",
		"http://10.0.0.1/callbacks",
		"http://[::1]:" + port + "/callbacks",
	} {
		resp, body := do(t, "POST", "/slow?ms=10", "{}", "x-async-callback", cb)
		var e struct{ Error, Message string }
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != http.StatusBadRequest || e.Error != "callback_not_allowed" || !strings.HasPrefix(e.Message, "x-async-callback: ") {
			t.Fatalf("x-async-callback %s: %s %s", cb, resp.Status, body)
		}
	}
	if !strings.HasPrefix(st.ReceiverURL, "http://127.0.0.1:") {
		t.Fatalf("the receiver is at %s, not on the rule's allowedHosts", st.ReceiverURL)
	}
	resp, body := do(t, "POST", "/slow?ms=10", `{"listed":true}`, "x-async-callback", st.ReceiverURL+"/callbacks?from=caller")
	id, _ := accepted(t, resp, body)
	rec, cb := waitCallback(t, id)
	if !rec.Verified || cb.Status != "completed" || !strings.Contains(rec.URI, "from=caller") {
		t.Fatalf("callback %+v %+v", rec, cb)
	}
}
