package collector

import (
	"github.com/asyncmesh/asyncmesh/internal/access"

	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestEventsStreamEveryChange(t *testing.T) {
	e := newEnv(t)
	en := e.envelope("/work?sleep=300ms", nil)
	tok, hash := access.NewToken()
	en.AccessHash = hash
	e.intake(en)
	resp, err := http.Get(e.api.URL + "/v1/requests/" + en.ID + "/events?token=" + tok)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("content-type") != "text/event-stream" {
		t.Fatalf("%s %v", resp.Status, resp.Header)
	}
	var seen []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() { // the stream ends once the record is delivered
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var v struct{ Status string }
			if err := json.Unmarshal([]byte(data), &v); err != nil {
				t.Fatal(err)
			}
			seen = append(seen, v.Status)
		}
	}
	if len(seen) < 2 || seen[len(seen)-1] != "delivered" {
		t.Fatalf("statuses streamed: %v", seen)
	}
}
