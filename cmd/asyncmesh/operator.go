package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// operatorURLFile is where asyncmesh sidecar writes its operator API's URL,
// in its data directory, beside the operator's token (admin-token).
const (
	operatorURLFile = "operator-url"
	tokenFile       = "admin-token"
)

// globalFlags are the flags of every operator command.
type globalFlags struct {
	server, tokenFile, data, output string
	timeout                         time.Duration
}

func (g *globalFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", "", "the collector's operator API, http(s)://host:port (default $ASYNCMESH_SERVER, else the running sidecar's)")
	fs.StringVar(&g.tokenFile, "token-file", "", "file holding the operator's bearer token (default $ASYNCMESH_TOKEN, $ASYNCMESH_TOKEN_FILE, else the sidecar's)")
	fs.StringVar(&g.data, "data", defaultDataDir(), "data directory of asyncmesh sidecar, where it leaves its API's URL and token")
	fs.StringVar(&g.output, "o", "table", "output: table or json")
	fs.DurationVar(&g.timeout, "timeout", 30*time.Second, "bound on each call to the API (not on tail's stream)")
}

// resolve finds the server and the token (the package doc's order) and
// returns the API client.
func (g *globalFlags) resolve() (*api, error) {
	if g.timeout <= 0 {
		return nil, usagef("--timeout %v: want more than 0", g.timeout)
	}
	server := g.server
	if server == "" {
		server = os.Getenv("ASYNCMESH_SERVER")
	}
	if server == "" {
		b, err := os.ReadFile(filepath.Join(g.data, operatorURLFile))
		if err != nil {
			return nil, usagef("no server: give --server URL or set ASYNCMESH_SERVER (a running asyncmesh sidecar writes %s; %v)", filepath.Join(g.data, operatorURLFile), err)
		}
		server = strings.TrimSpace(string(b))
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return nil, usagef("--server %q: want http(s)://host:port[/prefix]", server)
	}
	token := os.Getenv("ASYNCMESH_TOKEN")
	path := g.tokenFile
	if path == "" && token == "" {
		if path = os.Getenv("ASYNCMESH_TOKEN_FILE"); path == "" {
			path = filepath.Join(g.data, tokenFile)
		}
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, usagef("the operator's token: %v (give --token-file, or set ASYNCMESH_TOKEN)", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, usagef("the operator's token is empty")
	}
	return &api{base: strings.TrimSuffix(u.String(), "/"), token: token, timeout: g.timeout,
		http: &http.Client{}}, nil
}

// api calls the collector's operator API (collector/openapi.yaml).
type api struct {
	base, token string
	timeout     time.Duration
	http        *http.Client
}

// apiError is an error answer of the API: its status and JSON error.
type apiError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
}

func (e *apiError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the API answered %d", e.Status)
	}
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// maxAnswer bounds what is read of one answer (a page of 500 records with
// their histories and attempt logs stays well under it).
const maxAnswer = 64 << 20

// call sends method path?query with body (JSON, when not nil) and returns the
// answer's body; a non-2xx answer is an *apiError.
func (a *api) call(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.send(ctx, method, path, query, body, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	return data, nil
}

// send sends the request and returns a 2xx answer, or an *apiError.
func (a *api) send(ctx context.Context, method, path string, query url.Values, body any, header http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := a.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("authorization", "Bearer "+a.token)
	if body != nil {
		req.Header.Set("content-type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%s %s: no answer within %v (--timeout)", method, a.base+path, a.timeout)
		}
		return nil, fmt.Errorf("%s %s: %w (is the collector running? --server)", method, a.base+path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	ae := &apiError{Status: resp.StatusCode}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(data, ae) != nil || ae.Message == "" {
		ae.Message = strings.TrimSpace(string(data))
	}
	if resp.StatusCode == 401 {
		ae.Message += " — the operator's token was refused (--token-file, $ASYNCMESH_TOKEN)"
	}
	return nil, ae
}

// getJSON calls GET path and decodes the answer into v; it also returns
// the answer as it came (for -o json).
func (e *env) getJSON(path string, query url.Values, v any) ([]byte, error) {
	return e.doJSON("GET", path, query, nil, v)
}

// doJSON calls method path with body (JSON, when not nil) and decodes the
// answer into v; it also returns the answer as it came.
func (e *env) doJSON(method, path string, query url.Values, body, v any) ([]byte, error) {
	a, err := e.api()
	if err != nil {
		return nil, err
	}
	data, err := a.call(e.ctx, method, path, query, body)
	if err != nil {
		return nil, err
	}
	if v != nil {
		if err := json.Unmarshal(data, v); err != nil {
			return nil, fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
		}
	}
	return data, nil
}
