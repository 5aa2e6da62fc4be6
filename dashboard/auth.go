package dashboard

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/fieldhub/fieldhub/registry"
)

// AuthOptions tune web sessions and the login rate limit. Zero fields take
// the defaults.
type AuthOptions struct {
	// SessionIdle ends a session unused this long (default 12h).
	SessionIdle time.Duration
	// SessionMax ends a session this long after login (default 7 days).
	SessionMax time.Duration
	// MaxSessions bounds the sessions kept in memory; the oldest is
	// evicted beyond it (default 10,000).
	MaxSessions int
	// LoginEvery and LoginBurst are the per-client-IP login rate: a burst
	// of LoginBurst attempts, then one per LoginEvery (default 10, then
	// one per 6s: 10 a minute).
	LoginEvery time.Duration
	LoginBurst int
}

func (o AuthOptions) withDefaults() AuthOptions {
	if o.SessionIdle <= 0 {
		o.SessionIdle = 12 * time.Hour
	}
	if o.SessionMax <= 0 {
		o.SessionMax = 7 * 24 * time.Hour
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = 10_000
	}
	if o.LoginEvery <= 0 {
		o.LoginEvery = 6 * time.Second
	}
	if o.LoginBurst <= 0 {
		o.LoginBurst = 10
	}
	return o
}

// Cookie and header names of web sessions.
const (
	SessionCookie = "fieldhub_session"
	CSRFHeader    = "X-CSRF-Token"
)

// tokenRecheck is how often a session checks that its API token still
// exists, so revoking a token (even from the CLI, in another process) ends
// its sessions within a minute.
const tokenRecheck = time.Minute

// principal is who a request acts as.
type principal struct {
	TokenID   string
	TokenName string
	Via       string // "bearer" or "session"
	Session   *session
}

type principalKey struct{}

func principalOf(r *http.Request) principal {
	p, _ := r.Context().Value(principalKey{}).(principal)
	return p
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// authenticate checks a request's bearer token or session cookie, and for
// cookie requests that change state, the CSRF token and Origin. It writes
// the 401/403 itself when it fails.
func (s *server) authenticate(w http.ResponseWriter, r *http.Request) (principal, bool) {
	ctx := r.Context()
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || tok == "" {
			s.m.authFailures.WithLabelValues("malformed").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "the Authorization header must be 'Bearer <API token>'")
			return principal{}, false
		}
		t, ok, err := s.Registry.AuthenticateAPIToken(ctx, tok)
		if err != nil {
			internalError(w, fmt.Errorf("authenticate: %w", err))
			return principal{}, false
		}
		if !ok {
			s.m.authFailures.WithLabelValues("invalid_token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "the API token is not valid")
			return principal{}, false
		}
		return principal{TokenID: t.ID, TokenName: t.Name, Via: "bearer"}, true
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		s.m.authFailures.WithLabelValues("missing").Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "an API token (Authorization: Bearer) or a session (POST /api/v1/session) is required")
		return principal{}, false
	}
	now := s.Now()
	sess, ok := s.sessions.get(c.Value, now)
	if ok && now.Sub(sess.checked) > tokenRecheck {
		exists, err := s.tokenExists(r, sess.tokenID)
		if err != nil {
			internalError(w, fmt.Errorf("check session token: %w", err))
			return principal{}, false
		}
		if exists {
			s.sessions.touchChecked(sess, now)
		} else {
			s.sessions.revokeToken(sess.tokenID)
			ok = false
		}
	}
	if !ok {
		s.m.authFailures.WithLabelValues("session_expired").Inc()
		clearSessionCookie(w, r)
		writeError(w, http.StatusUnauthorized, "unauthorized", "the session expired or was revoked; log in again")
		return principal{}, false
	}
	if !safeMethod(r.Method) {
		if !sameOrigin(r) {
			s.m.authFailures.WithLabelValues("origin").Inc()
			writeError(w, http.StatusForbidden, "forbidden", "cross-origin request refused")
			return principal{}, false
		}
		got := r.Header.Get(CSRFHeader)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(sess.csrf)) != 1 {
			s.m.authFailures.WithLabelValues("csrf").Inc()
			writeError(w, http.StatusForbidden, "csrf", "a request with the session cookie that changes state needs the session's "+CSRFHeader+" header")
			return principal{}, false
		}
	}
	return principal{TokenID: sess.tokenID, TokenName: sess.tokenName, Via: "session", Session: sess}, true
}

func (s *server) tokenExists(r *http.Request, id string) (bool, error) {
	toks, err := s.Registry.APITokens(r.Context())
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(toks, func(t registry.APIToken) bool { return t.ID == id }), nil
}

// sameOrigin accepts a request without an Origin header (not a browser's
// cross-site request: browsers send Origin on every cross-origin POST,
// PUT and DELETE) or one whose Origin is this host.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	_, host, ok := strings.Cut(o, "://")
	return ok && strings.EqualFold(host, r.Host)
}

// secure reports whether the client reached us over TLS (directly or via a
// proxy that says so), so the session cookie gets the Secure flag.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func clearSessionCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r)})
}

// LoginRequest is the body of POST /api/v1/session.
type LoginRequest struct {
	Token string `json:"token"`
}

// SessionInfo describes the caller's authentication (login answer and
// GET /api/v1/session).
type SessionInfo struct {
	Auth      string `json:"auth"` // "session" or "bearer"
	TokenID   string `json:"token_id"`
	TokenName string `json:"token_name"`
	// CSRFToken must be sent as X-CSRF-Token on every state-changing
	// request made with the session cookie.
	CSRFToken string    `json:"csrf_token,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// login exchanges an API token for a session cookie. It is rate limited
// per client IP, and wants a JSON body, which a cross-site form cannot
// send without a CORS preflight we never grant.
func (s *server) login(w http.ResponseWriter, r *http.Request) {
	now := s.Now()
	if ok, retry := s.logins.allow(clientIP(r), now); !ok {
		s.m.logins.WithLabelValues("rate_limited").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
		writeError(w, http.StatusTooManyRequests, "rate_limited", fmt.Sprintf("too many login attempts from this address; retry in %s", retry.Round(time.Second)))
		return
	}
	if !sameOrigin(r) {
		s.m.logins.WithLabelValues("forbidden").Inc()
		writeError(w, http.StatusForbidden, "forbidden", "cross-origin login refused")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		s.m.logins.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send the token as JSON: {\"token\": \"...\"}")
		return
	}
	var req LoginRequest
	if !readJSON(w, r, 4096, &req) {
		s.m.logins.WithLabelValues("bad_request").Inc()
		return
	}
	if req.Token == "" {
		s.m.logins.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusBadRequest, "bad_request", "token: required")
		return
	}
	t, ok, err := s.Registry.AuthenticateAPIToken(r.Context(), req.Token)
	if err != nil {
		internalError(w, fmt.Errorf("authenticate: %w", err))
		return
	}
	if !ok {
		s.m.logins.WithLabelValues("invalid").Inc()
		writeError(w, http.StatusUnauthorized, "unauthorized", "the API token is not valid")
		return
	}
	sess, err := s.sessions.create(t.ID, t.Name, now)
	if err != nil {
		internalError(w, err)
		return
	}
	s.m.logins.WithLabelValues("ok").Inc()
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: sess.id, Path: "/",
		Expires: sess.created.Add(s.Auth.SessionMax), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure(r)})
	writeJSON(w, http.StatusOK, s.sessionInfo(principal{TokenID: t.ID, TokenName: t.Name, Via: "session", Session: sess}))
}

func (s *server) sessionInfo(p principal) SessionInfo {
	info := SessionInfo{Auth: p.Via, TokenID: p.TokenID, TokenName: p.TokenName}
	if p.Session != nil {
		info.CSRFToken = p.Session.csrf
		info.ExpiresAt = p.Session.created.Add(s.Auth.SessionMax)
	}
	return info
}

func (s *server) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.sessionInfo(principalOf(r)))
}

// logout revokes the caller's session (a bearer caller has none).
func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	if p := principalOf(r); p.Session != nil {
		s.sessions.remove(p.Session.id)
	}
	clearSessionCookie(w, r)
	w.WriteHeader(http.StatusNoContent)
}

// session is one web login. Sessions live in memory: a hub restart logs
// everyone out, and revoking one is deleting it.
type session struct {
	id        string // the cookie value: 256 random bits
	csrf      string
	tokenID   string
	tokenName string
	created   time.Time
	// lastUsed and checked are guarded by sessions.mu.
	lastUsed time.Time
	checked  time.Time
}

type sessions struct {
	opts AuthOptions
	mu   sync.Mutex
	m    map[string]*session
}

func newSessions(o AuthOptions) *sessions {
	return &sessions{opts: o, m: map[string]*session{}}
}

func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate session: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func (ss *sessions) create(tokenID, tokenName string, now time.Time) (*session, error) {
	id, err := randomToken()
	if err != nil {
		return nil, err
	}
	csrf, err := randomToken()
	if err != nil {
		return nil, err
	}
	s := &session{id: id, csrf: csrf, tokenID: tokenID, tokenName: tokenName, created: now, lastUsed: now, checked: now}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.sweepLocked(now)
	if len(ss.m) >= ss.opts.MaxSessions {
		var oldest *session
		for _, o := range ss.m {
			if oldest == nil || o.lastUsed.Before(oldest.lastUsed) {
				oldest = o
			}
		}
		delete(ss.m, oldest.id)
	}
	ss.m[id] = s
	return s, nil
}

func (ss *sessions) expired(s *session, now time.Time) bool {
	return now.Sub(s.lastUsed) > ss.opts.SessionIdle || now.Sub(s.created) > ss.opts.SessionMax
}

// sweepLocked drops expired sessions; it runs on login, so memory stays
// bounded without a goroutine.
func (ss *sessions) sweepLocked(now time.Time) {
	for id, s := range ss.m {
		if ss.expired(s, now) {
			delete(ss.m, id)
		}
	}
}

func (ss *sessions) get(id string, now time.Time) (*session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[id]
	if !ok {
		return nil, false
	}
	if ss.expired(s, now) {
		delete(ss.m, id)
		return nil, false
	}
	s.lastUsed = now
	return s, true
}

func (ss *sessions) touchChecked(s *session, now time.Time) {
	ss.mu.Lock()
	s.checked = now
	ss.mu.Unlock()
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	delete(ss.m, id)
	ss.mu.Unlock()
}

// revokeToken ends every session opened with the API token.
func (ss *sessions) revokeToken(tokenID string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id, s := range ss.m {
		if s.tokenID == tokenID {
			delete(ss.m, id)
		}
	}
}

func (ss *sessions) count() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.m)
}

// clientIP is the address the request came from. X-Forwarded-For is not
// trusted: anyone could set it to dodge the login limit.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// maxLimitedIPs bounds the login limiter's memory; past it (after
// forgetting idle addresses) new addresses are refused until some are
// forgotten, which only a flood from very many addresses reaches.
const maxLimitedIPs = 100_000

// loginLimiter is a token bucket per client IP.
type loginLimiter struct {
	every     time.Duration
	burst     int
	mu        sync.Mutex
	m         map[string]*ipLimit
	lastSweep time.Time
}

type ipLimit struct {
	l    *rate.Limiter
	seen time.Time
}

func newLoginLimiter(o AuthOptions) *loginLimiter {
	return &loginLimiter{every: o.LoginEvery, burst: o.LoginBurst, m: map[string]*ipLimit{}}
}

// allow takes one attempt for ip; when refused it says how long to wait.
func (l *loginLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A bucket idle for burst*every is full again, the same as a new one:
	// forgetting it changes nothing.
	idle := time.Duration(l.burst) * l.every
	if now.Sub(l.lastSweep) > time.Minute || len(l.m) >= maxLimitedIPs {
		for k, v := range l.m {
			if now.Sub(v.seen) > idle {
				delete(l.m, k)
			}
		}
		l.lastSweep = now
	}
	e, ok := l.m[ip]
	if !ok {
		if len(l.m) >= maxLimitedIPs {
			return false, l.every
		}
		e = &ipLimit{l: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.m[ip] = e
	}
	e.seen = now
	res := e.l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}
