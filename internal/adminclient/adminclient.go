// Package adminclient is how meshctl talks to a running meshd's admin API:
// one place that knows the address forms, timeouts, errors and (when meshd
// asks for them) the credentials, so a new credential is one change here and
// every command that reads or changes meshd's state gets it.
package adminclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshd/meshd/internal/datadir"
)

// DefaultAddress is meshd's default --admin-listen.
const DefaultAddress = "127.0.0.1:15014"

// DefaultTimeout bounds one request (not a stream, such as tap's).
const DefaultTimeout = 10 * time.Second

// TokenFileName is the admin token's file in meshd's data directory
// (server/admin.TokenFileName; not imported, so that meshctl's admin client
// does not pull in the server).
const TokenFileName = "admin.token"

// DefaultTokenFile is where a meshd with the default --data-dir keeps its
// admin token ("" when there is no default data directory).
func DefaultTokenFile() string {
	if d := datadir.DefaultOr(""); d != "" {
		return filepath.Join(d, TokenFileName)
	}
	return ""
}

// Options are the flags of every command that talks to meshd.
type Options struct {
	// Address is meshd's admin API: HOST:PORT (plain HTTP) or a URL
	// (http:// or https://, optionally with a path prefix when meshd sits
	// behind a proxy).
	Address string
	// Timeout bounds each request.
	Timeout time.Duration
	// TokenFile holds meshd's admin token, sent with every request (meshd
	// requires it for everything but health, readiness and metrics). The
	// default file may be missing (the request then goes without, and a
	// refusal says where the token was looked for); a file given
	// explicitly must exist.
	TokenFile string
}

// AddFlags registers the options on a command's flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Address, "admin-address", DefaultAddress,
		"meshd's admin API: `HOST:PORT` (meshd's --admin-listen), or a URL such as http://10.0.0.5:15014 or https://meshd-admin.example")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "give up on a request to meshd after this `DURATION`")
	fs.StringVar(&o.TokenFile, "admin-token-file", DefaultTokenFile(),
		"`FILE` holding meshd's admin token (meshd's <data-dir>/admin.token, or its --admin-token-file); needs read access to it")
}

// Client returns a client for the options, or an error for an address that
// is neither HOST:PORT nor an http(s) URL.
func (o *Options) Client() (*Client, error) {
	base, err := ParseAddress(o.Address)
	if err != nil {
		return nil, err
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	c := &Client{base: base, timeout: timeout, http: &http.Client{}, tokenFile: o.TokenFile}
	if o.TokenFile != "" {
		b, err := os.ReadFile(o.TokenFile)
		switch {
		case err == nil:
			c.token = strings.TrimSpace(string(b))
		case errors.Is(err, os.ErrNotExist) && o.TokenFile == DefaultTokenFile():
			// meshd may run elsewhere, or ask for nothing this command needs.
		default:
			return nil, fmt.Errorf("--admin-token-file: %w", err)
		}
	}
	return c, nil
}

// ParseAddress turns --admin-address into the API's base URL.
func ParseAddress(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("--admin-address is empty: give HOST:PORT or a URL, e.g. 127.0.0.1:15014")
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("--admin-address %q: %w", s, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("--admin-address %q: scheme %q is not supported: use http:// or https://", s, u.Scheme)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("--admin-address %q has no host", s)
		}
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("--admin-address %q: give only scheme, host, port and path", s)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		return u, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("--admin-address %q is not HOST:PORT or a URL: %w", s, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return &url.URL{Scheme: "http", Host: net.JoinHostPort(host, port)}, nil
}

// Client calls meshd's admin API.
type Client struct {
	base    *url.URL
	timeout time.Duration
	http    *http.Client
	// token is meshd's admin token ("" if tokenFile was not found).
	token, tokenFile string
}

// Base is the API's base URL (for messages).
func (c *Client) Base() string { return c.base.String() }

// Error is a failed call. Unreachable says meshd could not be reached at
// all (nothing listening, DNS, timeout), as opposed to meshd answering with
// an error Status.
type Error struct {
	Method, URL string
	Status      int    // HTTP status, 0 when meshd did not answer
	Message     string // meshd's answer, or the transport error
	Unreachable bool
	// Hint says what to do about a refused credential.
	Hint string
	err  error
}

func (e *Error) Error() string {
	if e.Unreachable {
		return fmt.Sprintf("cannot reach meshd's admin API at %s: %s (is meshd running, and is --admin-address its --admin-listen?)", e.URL, e.Message)
	}
	if e.Status == 0 {
		return fmt.Sprintf("%s %s: %s", e.Method, e.URL, e.Message)
	}
	msg := fmt.Sprintf("meshd answered %d %s to %s %s", e.Status, http.StatusText(e.Status), e.Method, e.URL)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.err }

// IsUnreachable reports whether err is a call that reached no meshd.
func IsUnreachable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Unreachable
}

// IsRefused reports whether meshd refused the call's credentials (401 or
// 403).
func IsRefused(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

// IsNotFound reports whether meshd answered 404 (an unknown proxy, say).
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// URL is the full URL of path with query.
func (c *Client) URL(path string, query url.Values) string {
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = query.Encode()
	return u.String()
}

// GetJSON fetches path and decodes meshd's JSON answer into out.
func (c *Client) GetJSON(ctx context.Context, path string, query url.Values, out any) error {
	body, err := c.Do(ctx, http.MethodGet, path, query)
	if err != nil {
		return err
	}
	return decode(body, out, c.URL(path, query))
}

// PostJSON posts to path (no body) and decodes meshd's JSON answer into out
// (unless out is nil).
func (c *Client) PostJSON(ctx context.Context, path string, query url.Values, out any) error {
	body, err := c.Do(ctx, http.MethodPost, path, query)
	if err != nil || out == nil {
		return err
	}
	return decode(body, out, c.URL(path, query))
}

func decode(body []byte, out any, u string) error {
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding meshd's answer from %s: %w (is --admin-address meshd's admin API?)", u, err)
	}
	return nil
}

// Do makes one request and returns the body of a 2xx answer.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.send(ctx, method, path, query)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, c.transportError(method, path, query, err)
	}
	return body, nil
}

// Stream makes a GET whose answer lasts (tap): no timeout but ctx's, and
// the body is the caller's to read and close.
func (c *Client) Stream(ctx context.Context, path string, query url.Values) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, path, query)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// send makes the request (credentials, when meshd asks for them, are added
// here) and turns a non-2xx answer into an *Error.
func (c *Client) send(ctx context.Context, method, path string, query url.Values) (*http.Response, error) {
	u := c.URL(path, query)
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, &Error{Method: method, URL: u, Message: err.Error(), err: err}
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if method != http.MethodGet && method != http.MethodHead {
		// meshd refuses actions in any other type: web pages can send
		// those to it without asking.
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportError(method, path, query, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		e := &Error{Method: method, URL: u, Status: resp.StatusCode, Message: string(bytes.TrimSpace(b))}
		if resp.StatusCode == http.StatusUnauthorized {
			e.Hint = c.tokenHint()
		}
		return nil, e
	}
	return resp, nil
}

// tokenHint says where meshctl looked for the admin token.
func (c *Client) tokenHint() string {
	switch {
	case c.tokenFile == "":
		return "no admin token: pass --admin-token-file with meshd's <data-dir>/" + TokenFileName
	case c.token == "":
		return "no admin token in " + c.tokenFile + ": pass --admin-token-file with meshd's <data-dir>/" + TokenFileName
	}
	return "the admin token in " + c.tokenFile + " was refused: is it this meshd's <data-dir>/" + TokenFileName + "?"
}

func (c *Client) transportError(method, path string, query url.Values, err error) error {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = ue.Err.Error() // without the method and URL, which Error adds
	}
	e := &Error{Method: method, URL: c.URL(path, query), Message: msg, err: err}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || (errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded) {
		e.Unreachable = true
	}
	return e
}
