package dashboard

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Bounds of the device API.
const (
	defaultDevicePage = 100
	maxDevicePage     = 1000
	maxDeviceBody     = 64 << 10
)

// DeviceView is the API form of a device; Latest holds its newest value
// per metric when asked for (list with ?latest=true, and show).
type DeviceView struct {
	registry.Device
	Latest []LatestSample `json:"latest,omitempty"`
}

// DevicePage is the answer of GET /api/v1/devices.
type DevicePage struct {
	Devices []DeviceView `json:"devices"`
	// Next is the cursor of the next page (pass it as ?after=); it is ""
	// after the last page. A full page may be followed by an empty one.
	Next string `json:"next"`
}

// parseBool reads an optional boolean query parameter.
func parseBool(v url.Values, key string) (*bool, error) {
	s := v.Get(key)
	if s == "" {
		return nil, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return nil, fmt.Errorf("%s: want true or false, not %q", key, s)
	}
	return &b, nil
}

// registryError maps a registry error to a response.
func registryError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, registry.ErrInvalid):
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, registry.ErrExists):
		writeError(w, http.StatusConflict, "exists", err.Error())
	case errors.Is(err, registry.ErrConflict):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	default:
		internalError(w, err)
	}
}

func (s *server) listDevices(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f := registry.DeviceFilter{Type: v.Get("type"), Search: v.Get("search"), After: v.Get("after"), Limit: defaultDevicePage}
	for _, l := range v["label"] {
		k, val, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("label: want key=value, not %q", l))
			return
		}
		if f.Labels == nil {
			f.Labels = map[string]string{}
		}
		f.Labels[k] = val
	}
	var err error
	if f.Online, err = parseBool(v, "online"); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	latest, err := parseBool(v, "latest")
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxDevicePage {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit: must be 1..%d", maxDevicePage))
			return
		}
		f.Limit = n
	}
	devs, err := s.Registry.Devices(r.Context(), f)
	if err != nil {
		registryError(w, err)
		return
	}
	page := DevicePage{Devices: make([]DeviceView, len(devs))}
	for i, d := range devs {
		page.Devices[i].Device = d
	}
	if latest != nil && *latest {
		if s.Store == nil {
			unavailable(w, "the telemetry store")
			return
		}
		ids := make([]string, len(devs))
		for i, d := range devs {
			ids[i] = d.ID
		}
		vals, err := s.latestOf(r.Context(), ids)
		if err != nil {
			internalError(w, err)
			return
		}
		for i := range page.Devices {
			page.Devices[i].Latest = vals[i]
		}
	}
	if len(devs) == f.Limit {
		page.Next = devs[len(devs)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *server) showDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.Registry.Device(r.Context(), r.PathValue("id"))
	if err != nil {
		registryError(w, err)
		return
	}
	out := DeviceView{Device: d}
	if s.Store != nil {
		samples, err := s.Store.Latest(r.Context(), d.ID)
		if err != nil {
			internalError(w, err)
			return
		}
		out.Latest = fromSamples(samples)
	}
	writeJSON(w, http.StatusOK, out)
}

// MQTTCredentials tell a new device how to connect.
type MQTTCredentials struct {
	// Broker is the hub's MQTT listener as bound (the host may be a
	// wildcard address: use the hub's host name).
	Broker   string `json:"broker,omitempty"`
	ClientID string `json:"client_id"`
	Username string `json:"username"`
	Topic    string `json:"topic"`
}

// CreatedDevice is the answer of POST /api/v1/devices. Token is shown only
// here (and on rotation): the hub keeps its hash.
type CreatedDevice struct {
	Device registry.Device `json:"device"`
	Token  string          `json:"token"`
	MQTT   MQTTCredentials `json:"mqtt"`
}

func (s *server) credentials(id string) MQTTCredentials {
	return MQTTCredentials{Broker: s.Info.MQTT, ClientID: id, Username: id, Topic: telemetry.TelemetryTopic(id)}
}

func (s *server) createDevice(w http.ResponseWriter, r *http.Request) {
	var spec registry.DeviceSpec
	if !readJSON(w, r, maxDeviceBody, &spec) {
		return
	}
	d, tok, err := s.Registry.CreateDevice(r.Context(), spec)
	if err != nil {
		registryError(w, err)
		return
	}
	s.Logger.Info("device created", "device", d.ID, "type", d.Type, "by", principalOf(r).TokenName)
	w.Header().Set("Location", "/api/v1/devices/"+url.PathEscape(d.ID))
	writeJSON(w, http.StatusCreated, CreatedDevice{Device: d, Token: tok, MQTT: s.credentials(d.ID)})
}

func (s *server) deleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Registry.DeleteDevice(r.Context(), id); err != nil {
		registryError(w, err)
		return
	}
	s.Logger.Info("device deleted", "device", id, "by", principalOf(r).TokenName)
	w.WriteHeader(http.StatusNoContent)
}

// RotatedToken is the answer of POST /api/v1/devices/{id}/token.
type RotatedToken struct {
	Device string          `json:"device"`
	Token  string          `json:"token"`
	MQTT   MQTTCredentials `json:"mqtt"`
}

func (s *server) rotateToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	tok, err := s.Registry.RotateDeviceToken(r.Context(), id)
	if err != nil {
		registryError(w, err)
		return
	}
	s.Logger.Info("device token rotated", "device", id, "by", principalOf(r).TokenName)
	writeJSON(w, http.StatusOK, RotatedToken{Device: id, Token: tok, MQTT: s.credentials(id)})
}

// Summary is the fleet at a glance (GET /api/v1/summary).
type Summary struct {
	Devices DeviceCounts `json:"devices"`
	Rates   Rates        `json:"rates"`
	// RecentRejections are the last rejection events since the hub
	// started (up to 20), oldest first.
	RecentRejections []Event `json:"recent_rejections"`
	// Watchers is how many live event streams are open.
	Watchers int       `json:"watchers"`
	Time     time.Time `json:"time"`
}

// DeviceCounts counts registered devices by presence.
type DeviceCounts struct {
	Total   int `json:"total"`
	Online  int `json:"online"`
	Offline int `json:"offline"`
}

func (s *server) summary(w http.ResponseWriter, r *http.Request) {
	total, online, err := s.Registry.CountDevices(r.Context())
	if err != nil {
		internalError(w, err)
		return
	}
	out := Summary{Devices: DeviceCounts{Total: total, Online: online, Offline: total - online}, Time: s.Now().UTC()}
	if s.Events != nil {
		out.Rates = s.Events.Rates()
		out.Watchers = s.Events.Stats().Subscribers
		out.RecentRejections = s.Events.RecentRejections()
	} else {
		out.Rates = Rates{Readings: []uint64{}, Rejections: []uint64{}}
		out.RecentRejections = []Event{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) types(w http.ResponseWriter, r *http.Request) {
	out := make([]*telemetry.DeviceType, 0, len(s.Types))
	for _, name := range slices.Sorted(maps.Keys(s.Types)) {
		out = append(out, s.Types[name])
	}
	writeJSON(w, http.StatusOK, map[string]any{"types": out})
}

// TokenList is the answer of GET /api/v1/tokens.
type TokenList struct {
	Tokens []registry.APIToken `json:"tokens"`
	// Current is the id of the token the caller authenticated with.
	Current string `json:"current"`
}

// CreatedToken is the answer of POST /api/v1/tokens; Secret is shown only
// here.
type CreatedToken struct {
	Token  registry.APIToken `json:"token"`
	Secret string            `json:"secret"`
}

// Every operator token has full rights today (roles are future work), so
// the token routes are open to any authenticated caller.
func (s *server) listTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := s.Registry.APITokens(r.Context())
	if err != nil {
		internalError(w, err)
		return
	}
	if toks == nil {
		toks = []registry.APIToken{}
	}
	writeJSON(w, http.StatusOK, TokenList{Tokens: toks, Current: principalOf(r).TokenID})
}

func (s *server) createToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if !readJSON(w, r, 4096, &req) {
		return
	}
	tok, secret, err := s.Registry.CreateAPIToken(r.Context(), req.Name)
	if err != nil {
		registryError(w, err)
		return
	}
	s.Logger.Info("api token created", "token", tok.ID, "name", tok.Name, "by", principalOf(r).TokenName)
	w.Header().Set("Location", "/api/v1/tokens/"+tok.ID)
	writeJSON(w, http.StatusCreated, CreatedToken{Token: tok, Secret: secret})
}

// deleteToken revokes an API token and the web sessions opened with it.
// The last token cannot be deleted: that would lock every operator out.
func (s *server) deleteToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	toks, err := s.Registry.APITokens(r.Context())
	if err != nil {
		internalError(w, err)
		return
	}
	if !slices.ContainsFunc(toks, func(t registry.APIToken) bool { return t.ID == id }) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("api token %q does not exist", id))
		return
	}
	if len(toks) == 1 {
		writeError(w, http.StatusConflict, "last_token", "this is the only API token: create another before deleting it")
		return
	}
	if err := s.Registry.DeleteAPIToken(r.Context(), id); err != nil {
		registryError(w, err)
		return
	}
	s.sessions.revokeToken(id)
	s.Logger.Info("api token deleted", "token", id, "by", principalOf(r).TokenName)
	w.WriteHeader(http.StatusNoContent)
}
