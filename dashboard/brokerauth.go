package dashboard

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
)

// BrokerAuthPrefix is where NewBrokerAuth's routes live.
const BrokerAuthPrefix = "/broker-auth/"

// BrokerAuthOptions configure NewBrokerAuth. Auth and Secret are required.
type BrokerAuthOptions struct {
	// Auth checks device tokens (*registry.Registry).
	Auth broker.Authenticator
	// Secret is what the broker must present: "Authorization: Bearer
	// <secret>", or basic auth with it as the password (any user name).
	Secret     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// brokerAuthTimeout bounds one token check against the registry.
const brokerAuthTimeout = 5 * time.Second

// maxBrokerAuthBody bounds a request: ids, tokens and topics are short.
const maxBrokerAuthBody = 16 << 10

// NewBrokerAuth serves the device authentication and topic ACL of the
// embedded broker over HTTP, for an external broker (docs/deploy.md), with
// the very same decisions (broker.CheckDevice, broker.Allowed):
//
//	POST /broker-auth/emqx/authn      EMQX 5 HTTP authentication:
//	     {"clientid","username","password"} -> 200 {"result":"allow"|"deny","is_superuser":false}
//	POST /broker-auth/emqx/authz      EMQX 5 HTTP authorization:
//	     {"clientid","username","topic","action":"publish"|"subscribe"} -> 200 {"result":"allow"|"deny"}
//	POST /broker-auth/mosquitto/user       mosquitto-go-auth's HTTP backend:
//	     username, password, clientid -> 200 allow, 403 deny
//	POST /broker-auth/mosquitto/superuser  always 403: devices are never superusers
//	POST /broker-auth/mosquitto/acl        username, clientid, topic, acc
//	     (1 read, 2 write, 3 both, 4 subscribe) -> 200 allow, 403 deny
//
// Parameters are read from a JSON or form body, or the query string (EMQX
// can send GET requests). The mosquitto answers carry {"ok":bool,"error":""}
// too, so go-auth's json response mode works as well as its status mode.
//
// Only the broker calls these, so they need the shared secret (401
// without it). They say allow or deny and nothing else: why a device was
// refused is counted in fieldhub_broker_auth_hook_requests_total, never
// told, so the endpoints cannot be used to learn which devices exist.
func NewBrokerAuth(o BrokerAuthOptions) (http.Handler, error) {
	if o.Auth == nil || o.Secret == "" {
		return nil, errors.New("broker auth: Auth and Secret are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	h := &brokerAuth{o: o, secret: sha256.Sum256([]byte(o.Secret)), mux: http.NewServeMux()}
	h.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fieldhub_broker_auth_hook_requests_total",
		Help: "Requests of an external broker to the auth hook, by endpoint and result: allow, deny (topic), deny_{reason} (a refused device: anonymous, no_password, invalid_username, client_id_mismatch, bad_credentials), unauthorized (no or wrong secret), bad_request, error (the registry failed).",
	}, []string{"endpoint", "result"})
	if o.Registerer != nil {
		if err := o.Registerer.Register(h.requests); err != nil {
			return nil, fmt.Errorf("broker auth metrics: %w", err)
		}
	}
	for path, fn := range map[string]func(http.ResponseWriter, *http.Request, url.Values) (string, int, any){
		"emqx/authn":          h.emqxAuthn,
		"emqx/authz":          h.emqxAuthz,
		"mosquitto/user":      h.mosqUser,
		"mosquitto/superuser": h.mosqSuperuser,
		"mosquitto/acl":       h.mosqACL,
	} {
		h.mux.HandleFunc(BrokerAuthPrefix+path, h.wrap(path, fn))
	}
	return h, nil
}

type brokerAuth struct {
	o        BrokerAuthOptions
	secret   [sha256.Size]byte
	mux      *http.ServeMux
	requests *prometheus.CounterVec
}

func (h *brokerAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// authorized checks the shared secret in constant time (hashes compared,
// so the secret's length does not show either).
func (h *brokerAuth) authorized(r *http.Request) bool {
	var got string
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		got = tok
	} else if _, pass, ok := r.BasicAuth(); ok {
		got = pass
	} else {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], h.secret[:]) == 1
}

// wrap checks the method and the secret, parses the parameters, runs fn
// and writes its answer: fn returns the metric result, the status and the
// JSON body.
func (h *brokerAuth) wrap(endpoint string, fn func(http.ResponseWriter, *http.Request, url.Values) (string, int, any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodGet:
		default:
			w.Header().Set("Allow", "POST, PUT, GET")
			h.requests.WithLabelValues(endpoint, "bad_request").Inc()
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use POST"})
			return
		}
		if !h.authorized(r) {
			h.requests.WithLabelValues(endpoint, "unauthorized").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub broker auth"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the auth hook secret (auth_hook.secret) is missing or wrong"})
			return
		}
		params, err := brokerAuthParams(r)
		if err != nil {
			h.requests.WithLabelValues(endpoint, "bad_request").Inc()
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		result, status, body := fn(w, r, params)
		h.requests.WithLabelValues(endpoint, result).Inc()
		writeJSON(w, status, body)
	}
}

// brokerAuthParams merges the query string with a JSON or form body (the
// body wins). JSON numbers (go-auth's acc) are kept as their text.
func brokerAuthParams(r *http.Request) (url.Values, error) {
	v := r.URL.Query()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBrokerAuthBody+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxBrokerAuthBody {
		return nil, fmt.Errorf("body larger than %d bytes", maxBrokerAuthBody)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return v, nil
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/x-www-form-urlencoded":
		f, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, fmt.Errorf("form body: %w", err)
		}
		for k, vs := range f {
			v[k] = vs
		}
	default: // JSON, also when the broker sends no content type
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, fmt.Errorf("body is neither a JSON object nor a form: %w", err)
		}
		for k, x := range m {
			switch x := x.(type) {
			case string:
				v.Set(k, x)
			case float64:
				v.Set(k, strconv.FormatFloat(x, 'f', -1, 64))
			case bool:
				v.Set(k, strconv.FormatBool(x))
			case nil:
			default:
				return nil, fmt.Errorf("parameter %q: want a string or number", k)
			}
		}
	}
	return v, nil
}

// checkDevice is broker.CheckDevice with a timeout; result is "allow",
// a refusal reason, or "error".
func (h *brokerAuth) checkDevice(r *http.Request, p url.Values) (result string, err error) {
	ctx, cancel := context.WithTimeout(r.Context(), brokerAuthTimeout)
	defer cancel()
	reason, err := broker.CheckDevice(ctx, h.o.Auth, p.Get("clientid"), p.Get("username"), p.Get("password"))
	if err != nil {
		h.o.Logger.Error("broker auth hook: device authentication failed", "username", truncateForLog(p.Get("username")), "error", err)
		return "error", err
	}
	if reason != "" {
		h.o.Logger.Debug("broker auth hook: device refused", "reason", reason, "username", truncateForLog(p.Get("username")), "clientid", truncateForLog(p.Get("clientid")))
		return "deny_" + reason, nil
	}
	return "allow", nil
}

// aclDevice is the device an ACL request is about: the client id, which
// the authentication tied to the username (a mismatch never passed it).
func aclDevice(p url.Values) (string, bool) {
	id := p.Get("clientid")
	if id == "" || (p.Get("username") != "" && p.Get("username") != id) {
		return "", false
	}
	return id, true
}

type emqxAnswer struct {
	Result      string `json:"result"`
	IsSuperuser bool   `json:"is_superuser"`
}

func (h *brokerAuth) emqxAuthn(_ http.ResponseWriter, r *http.Request, p url.Values) (string, int, any) {
	res, err := h.checkDevice(r, p)
	if err != nil {
		// EMQX takes a 5xx as "ignore": the next authenticator, or deny.
		return res, http.StatusServiceUnavailable, map[string]string{"result": "ignore", "error": "registry unavailable"}
	}
	if res != "allow" {
		return res, http.StatusOK, emqxAnswer{Result: "deny"}
	}
	return res, http.StatusOK, emqxAnswer{Result: "allow"}
}

func (h *brokerAuth) emqxAuthz(_ http.ResponseWriter, _ *http.Request, p url.Values) (string, int, any) {
	var publish bool
	switch p.Get("action") {
	case "publish":
		publish = true
	case "subscribe":
	default:
		return "bad_request", http.StatusBadRequest, map[string]string{"error": `action must be "publish" or "subscribe"`}
	}
	dev, ok := aclDevice(p)
	if ok && broker.Allowed(dev, p.Get("topic"), publish) {
		return "allow", http.StatusOK, map[string]string{"result": "allow"}
	}
	return "deny", http.StatusOK, map[string]string{"result": "deny"}
}

type goAuthAnswer struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

func goAuth(result string) (string, int, any) {
	if result == "allow" {
		return result, http.StatusOK, goAuthAnswer{OK: true}
	}
	return result, http.StatusForbidden, goAuthAnswer{Error: "denied"}
}

func (h *brokerAuth) mosqUser(_ http.ResponseWriter, r *http.Request, p url.Values) (string, int, any) {
	res, err := h.checkDevice(r, p)
	if err != nil {
		// go-auth takes a 5xx as an error: denied, and logged as such.
		return res, http.StatusServiceUnavailable, goAuthAnswer{Error: "registry unavailable"}
	}
	return goAuth(res)
}

func (h *brokerAuth) mosqSuperuser(http.ResponseWriter, *http.Request, url.Values) (string, int, any) {
	return goAuth("deny")
}

// Mosquitto's access bits (mosquitto_plugin.h).
const (
	mosqACLRead      = 1
	mosqACLWrite     = 2
	mosqACLSubscribe = 4
)

func (h *brokerAuth) mosqACL(_ http.ResponseWriter, _ *http.Request, p url.Values) (string, int, any) {
	acc, err := strconv.Atoi(p.Get("acc"))
	if err != nil || acc <= 0 || acc&^(mosqACLRead|mosqACLWrite|mosqACLSubscribe) != 0 {
		return "bad_request", http.StatusBadRequest, goAuthAnswer{Error: "acc must be 1 (read), 2 (write), 3 or 4 (subscribe)"}
	}
	dev, ok := aclDevice(p)
	topic := p.Get("topic")
	allowed := ok
	if acc&(mosqACLRead|mosqACLSubscribe) != 0 {
		allowed = allowed && broker.Allowed(dev, topic, false)
	}
	if acc&mosqACLWrite != 0 {
		allowed = allowed && broker.Allowed(dev, topic, true)
	}
	if allowed {
		return goAuth("allow")
	}
	return goAuth("deny")
}

func truncateForLog(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}
