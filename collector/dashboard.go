package collector

import (
	"embed"
	"io/fs"
	"net/http"
)

// The operator's web dashboard: static HTML, CSS and JavaScript modules,
// embedded in the binary, served at /dashboard/ wherever the operator
// endpoints are. The assets hold no data and are public; the page asks for
// the operator's bearer token, keeps it in sessionStorage and sends it on
// every fetch of the API (never in a URL). The event stream is read with
// fetch, which can send the header, not EventSource, which cannot.
//
//go:embed dashboard
var dashboardFiles embed.FS

// dashboardCSP keeps the page to its own assets and its own API: no inline
// script, no other origin, never framed (clickjacking of the replay and
// disable buttons).
const dashboardCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

func (c *Collector) dashboardRoutes(mux *http.ServeMux) {
	sub, _ := fs.Sub(dashboardFiles, "dashboard")
	files := http.StripPrefix("/dashboard/", http.FileServer(http.FS(sub)))
	mux.HandleFunc("GET /dashboard/", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("content-security-policy", dashboardCSP)
		h.Set("x-frame-options", "DENY")
		h.Set("x-content-type-options", "nosniff")
		h.Set("referrer-policy", "no-referrer")
		h.Set("cache-control", "no-cache")
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /dashboard", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/dashboard/", http.StatusMovedPermanently)
	})
}
