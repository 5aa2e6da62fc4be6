// Package config reads fieldhub's configuration once, at the edge, into
// plain validated structs. It is the only package besides cmd/* that knows
// viper.
//
// Sources, lowest precedence first: the defaults embedded from
// configs/fieldhub.yaml, the file named by --config, FIELDHUB_* environment
// variables, then command-line flags bound by the caller.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/fieldhub/fieldhub/configs"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Config is the whole hub configuration.
type Config struct {
	DataDir string `mapstructure:"data_dir"`
	// Roles are the parts of the hub this process runs (RoleBroker, ...);
	// see docs/deploy.md.
	Roles       []string `mapstructure:"roles"`
	Log         Log      `mapstructure:"log"`
	MQTT        MQTT     `mapstructure:"mqtt"`
	HTTP        HTTP     `mapstructure:"http"`
	Store       Store    `mapstructure:"store"`
	Ingest      Ingest   `mapstructure:"ingest"`
	Commands    Commands `mapstructure:"commands"`
	AuthHook    AuthHook `mapstructure:"auth_hook"`
	DeviceTypes string   `mapstructure:"device_types"`

	// Types holds the device types loaded from DeviceTypes (or the built-in
	// ones), keyed by name.
	Types map[string]*telemetry.DeviceType `mapstructure:"-"`
}

type Log struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

type MQTT struct {
	Addr           string        `mapstructure:"addr"`
	WSAddr         string        `mapstructure:"ws_addr"`
	TLS            TLS           `mapstructure:"tls"`
	MaxPacketSize  uint32        `mapstructure:"max_packet_size"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	ReceiveMaximum uint16        `mapstructure:"receive_maximum"`
	MaxInflight    uint16        `mapstructure:"max_inflight"`
	MaxQueued      int32         `mapstructure:"max_queued"`
	MaxClients     int64         `mapstructure:"max_clients"`

	// The client side, for processes without the broker role: the
	// external broker that ingest and command connect to.
	URL       string    `mapstructure:"url"`
	Username  string    `mapstructure:"username"`
	Password  string    `mapstructure:"password"`
	ClientID  string    `mapstructure:"client_id"`
	ClientTLS ClientTLS `mapstructure:"client_tls"`
}

// ClientTLS configures TLS towards an external broker (ssl:// or wss://).
type ClientTLS struct {
	CA   string `mapstructure:"ca"`   // PEM CA bundle; "" = the system roots
	Cert string `mapstructure:"cert"` // client certificate, for mutual TLS
	Key  string `mapstructure:"key"`
}

// AuthHook configures the HTTP endpoints that let an external broker
// authenticate devices and check topics against the registry.
type AuthHook struct {
	// Secret must be presented by the broker (bearer token or basic auth
	// password); "" disables the endpoints.
	Secret string `mapstructure:"secret"`
}

// Roles of a hub process.
const (
	RoleBroker    = "broker"
	RoleIngest    = "ingest"
	RoleCommand   = "command"
	RoleDashboard = "dashboard"
)

// AllRoles are the roles in their canonical order (the default: all).
var AllRoles = []string{RoleBroker, RoleIngest, RoleCommand, RoleDashboard}

// Has reports whether the process runs role.
func (c *Config) Has(role string) bool { return slices.Contains(c.Roles, role) }

type TLS struct {
	Addr     string `mapstructure:"addr"`
	Cert     string `mapstructure:"cert"`
	Key      string `mapstructure:"key"`
	ClientCA string `mapstructure:"client_ca"`
}

type HTTP struct {
	Addr string `mapstructure:"addr"`
}

type Store struct {
	Backend          string        `mapstructure:"backend"`
	Retention        time.Duration `mapstructure:"retention"`
	OutOfOrderWindow time.Duration `mapstructure:"out_of_order_window"`
	Influx           Influx        `mapstructure:"influx"`
}

type Influx struct {
	URL          string        `mapstructure:"url"`
	Token        string        `mapstructure:"token"`
	Org          string        `mapstructure:"org"`
	Bucket       string        `mapstructure:"bucket"`
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
}

type Ingest struct {
	MaxFuture time.Duration `mapstructure:"max_future"`
	QoS0Queue int           `mapstructure:"qos0_queue"`
}

type Commands struct {
	DefaultTimeout time.Duration `mapstructure:"default_timeout"`
	MaxTimeout     time.Duration `mapstructure:"max_timeout"`
}

// EnvPrefix is the prefix of environment variables that set config keys.
const EnvPrefix = "FIELDHUB"

// Load reads the configuration. file may be "" (embedded defaults only).
// flags may be nil; a flag whose name is a config key ("data_dir" is bound
// from --data-dir) overrides the other sources when it was set explicitly.
func Load(file string, flags *pflag.FlagSet) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(configs.Default)); err != nil {
		return nil, fmt.Errorf("read embedded defaults: %w", err)
	}
	known := v.AllKeys()
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if err := checkKeys(b, known, file); err != nil {
			return nil, err
		}
		if err := v.MergeConfig(bytes.NewReader(b)); err != nil {
			return nil, fmt.Errorf("read config %s: %w", file, err)
		}
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, k := range known {
		if err := v.BindEnv(k); err != nil {
			return nil, fmt.Errorf("bind env for %s: %w", k, err)
		}
	}
	if flags != nil {
		for _, k := range known {
			if f := flags.Lookup(FlagName(k)); f != nil {
				if err := v.BindPFlag(k, f); err != nil {
					return nil, fmt.Errorf("bind flag --%s: %w", f.Name, err)
				}
			}
		}
	}

	var c Config
	err := v.UnmarshalExact(&c, func(dc *mapstructure.DecoderConfig) {
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		)
		dc.WeaklyTypedInput = true
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// FlagName is the command-line flag for a config key: "mqtt.addr" is
// --mqtt-addr, "data_dir" is --data-dir.
func FlagName(key string) string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(key)
}

// checkKeys refuses keys the defaults do not have, naming them. viper's
// UnmarshalExact would too, but only after merging, and without the file name.
func checkKeys(b []byte, known []string, file string) error {
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", file, err)
	}
	set := make(map[string]bool, len(known))
	for _, k := range known {
		set[k] = true
		for p := k; strings.Contains(p, "."); {
			p = p[:strings.LastIndex(p, ".")]
			set[p+"."] = true
		}
	}
	var unknown []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, val := range m {
			key := prefix + strings.ToLower(k)
			if set[key+"."] {
				if sub, ok := val.(map[string]any); ok {
					walk(key+".", sub)
				} else {
					unknown = append(unknown, key+" (must be a mapping of keys)")
				}
				continue
			}
			if !set[key] {
				unknown = append(unknown, key)
			}
		}
	}
	walk("", doc)
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("config %s: unknown key %s", file, strings.Join(unknown, ", "))
	}
	return nil
}

// Validate checks every value and names the key of the first bad one. It
// loads the device types file too.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	checkAddr := func(key, addr string, required bool) {
		if addr == "" {
			if required {
				bad(key, "must not be empty")
			}
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port: %v", addr, err)
		}
	}
	checkAddr("mqtt.addr", c.MQTT.Addr, false)
	checkAddr("mqtt.ws_addr", c.MQTT.WSAddr, false)
	checkAddr("mqtt.tls.addr", c.MQTT.TLS.Addr, false)
	checkAddr("http.addr", c.HTTP.Addr, true)
	c.validateRoles(bad)
	if c.Has(RoleBroker) && c.MQTT.Addr == "" && c.MQTT.WSAddr == "" && c.MQTT.TLS.Addr == "" {
		bad("mqtt.addr", "no MQTT listener is enabled (mqtt.addr, mqtt.ws_addr and mqtt.tls.addr are all empty)")
	}
	if c.MQTT.TLS.Addr != "" && (c.MQTT.TLS.Cert == "" || c.MQTT.TLS.Key == "") {
		bad("mqtt.tls.cert", "mqtt.tls.addr is set, so mqtt.tls.cert and mqtt.tls.key are required")
	}
	for key, f := range map[string]string{"mqtt.tls.cert": c.MQTT.TLS.Cert, "mqtt.tls.key": c.MQTT.TLS.Key, "mqtt.tls.client_ca": c.MQTT.TLS.ClientCA} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	if c.MQTT.MaxPacketSize < 1024 || c.MQTT.MaxPacketSize > 256<<20 {
		bad("mqtt.max_packet_size", "%d is outside 1024..268435456 bytes", c.MQTT.MaxPacketSize)
	}
	if c.MQTT.ConnectTimeout < 100*time.Millisecond || c.MQTT.ConnectTimeout > 5*time.Minute {
		bad("mqtt.connect_timeout", "%s is outside 100ms..5m", c.MQTT.ConnectTimeout)
	}
	if c.MQTT.ReceiveMaximum == 0 {
		bad("mqtt.receive_maximum", "must be at least 1")
	}
	if c.MQTT.MaxInflight == 0 {
		bad("mqtt.max_inflight", "must be at least 1")
	}
	if c.MQTT.MaxQueued < 1 {
		bad("mqtt.max_queued", "must be at least 1")
	}
	if c.MQTT.MaxClients < 1 {
		bad("mqtt.max_clients", "must be at least 1")
	}
	switch c.Store.Backend {
	case "tsdb":
	case "influx":
		u, err := url.Parse(c.Store.Influx.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("store.influx.url", "%q is not an http(s) URL", c.Store.Influx.URL)
		}
		if c.Store.Influx.Bucket == "" {
			bad("store.influx.bucket", "must not be empty")
		}
		if c.Store.Influx.WriteTimeout <= 0 {
			bad("store.influx.write_timeout", "must be positive")
		}
	default:
		bad("store.backend", "%q is not one of tsdb, influx", c.Store.Backend)
	}
	if c.Store.Retention < time.Hour {
		bad("store.retention", "%s is shorter than 1h", c.Store.Retention)
	}
	if c.Store.OutOfOrderWindow < time.Hour || c.Store.OutOfOrderWindow > c.Store.Retention {
		bad("store.out_of_order_window", "%s is outside 1h..store.retention", c.Store.OutOfOrderWindow)
	}
	if c.Ingest.MaxFuture < 0 || c.Ingest.MaxFuture >= c.Store.OutOfOrderWindow {
		bad("ingest.max_future", "%s is outside 0..store.out_of_order_window", c.Ingest.MaxFuture)
	}
	if c.Ingest.QoS0Queue < 0 {
		bad("ingest.qos0_queue", "must not be negative")
	}
	if c.Commands.DefaultTimeout <= 0 {
		bad("commands.default_timeout", "must be positive")
	}
	if c.Commands.MaxTimeout < c.Commands.DefaultTimeout {
		bad("commands.max_timeout", "%s is shorter than commands.default_timeout", c.Commands.MaxTimeout)
	}
	if c.AuthHook.Secret != "" && len(c.AuthHook.Secret) < 16 {
		bad("auth_hook.secret", "is %d characters; use at least 16 random ones (or \"\" to disable the endpoints)", len(c.AuthHook.Secret))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	types, err := LoadDeviceTypes(c.DeviceTypes)
	if err != nil {
		return err
	}
	c.Types = types
	return nil
}

// LoadDeviceTypes reads a device types file ("" for the built-in types).
// It is parsed with yaml directly rather than viper, because viper folds key
// case and metric names are case-sensitive.
func LoadDeviceTypes(file string) (map[string]*telemetry.DeviceType, error) {
	b, name := configs.DeviceTypes, "built-in device types"
	if file != "" {
		var err error
		if b, err = os.ReadFile(file); err != nil {
			return nil, fmt.Errorf("config: device_types: %w", err)
		}
		name = file
	}
	var doc struct {
		Types map[string]struct {
			UnknownMetrics string `yaml:"unknown_metrics"`
			Metrics        map[string]struct {
				Type string   `yaml:"type"`
				Unit string   `yaml:"unit"`
				Min  *float64 `yaml:"min"`
				Max  *float64 `yaml:"max"`
			} `yaml:"metrics"`
		} `yaml:"types"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("config: device_types: %s: %w", name, err)
	}
	types := make(map[string]*telemetry.DeviceType, len(doc.Types))
	for tn, t := range doc.Types {
		dt := &telemetry.DeviceType{Name: tn, UnknownMetrics: t.UnknownMetrics, Metrics: map[string]telemetry.MetricSpec{}}
		for mn, m := range t.Metrics {
			dt.Metrics[mn] = telemetry.MetricSpec{Type: m.Type, Unit: m.Unit, Min: m.Min, Max: m.Max}
		}
		if err := dt.Check(); err != nil {
			return nil, fmt.Errorf("config: device_types: %s: types.%s: %w", name, tn, err)
		}
		types[tn] = dt
	}
	return types, nil
}

// MaxReadingAge is how old a reading may be when it arrives: the embedded
// store's out-of-order window behind the hub's clock (older ones are
// rejected as too_old); InfluxDB takes any age, so 0 there.
func (c *Config) MaxReadingAge() time.Duration {
	if c.Store.Backend == "tsdb" {
		return c.Store.OutOfOrderWindow
	}
	return 0
}

// Logger builds the slog logger the config asks for.
func (c *Config) Logger(w *os.File) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Log.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Keys lists every config key, for --help and docs.
func Keys() []string {
	v := viper.New()
	v.SetConfigType("yaml")
	_ = v.ReadConfig(bytes.NewReader(configs.Default))
	return v.AllKeys()
}

// validateRoles checks roles and the keys that depend on them. The embedded
// broker hands device messages to ingest and command in the same process
// (it has no accounts for remote workers), so it runs only with both;
// without it, ingest and command need an external broker (mqtt.url). The
// embedded store is one process's files: a dashboard without ingest would
// read an empty one.
func (c *Config) validateRoles(bad func(key, format string, args ...any)) {
	if len(c.Roles) == 0 {
		bad("roles", "must name at least one of %s", strings.Join(AllRoles, ", "))
		return
	}
	seen := map[string]bool{}
	for i, r := range c.Roles {
		r = strings.ToLower(strings.TrimSpace(r))
		c.Roles[i] = r
		switch {
		case !slices.Contains(AllRoles, r):
			bad("roles", "%q is not one of %s", r, strings.Join(AllRoles, ", "))
		case seen[r]:
			bad("roles", "%q is listed twice", r)
		}
		seen[r] = true
	}
	external := !c.Has(RoleBroker) && (c.Has(RoleIngest) || c.Has(RoleCommand))
	switch {
	case c.Has(RoleBroker) && (!c.Has(RoleIngest) || !c.Has(RoleCommand)):
		bad("roles", "the broker role needs the ingest and command roles in the same process (the embedded broker hands them device messages directly); for separate workers use an external broker")
	case c.Has(RoleBroker) && c.MQTT.URL != "":
		bad("mqtt.url", "is for processes without the broker role (an external broker); this one runs the embedded broker")
	case external && c.MQTT.URL == "":
		bad("mqtt.url", "is required: roles %s run without the embedded broker, so they connect to an external one (e.g. tcp://broker:1883)", strings.Join(c.Roles, ","))
	case external:
		u, err := url.Parse(c.MQTT.URL)
		if err != nil || u.Host == "" {
			bad("mqtt.url", "%q is not a broker URL like tcp://host:1883", c.MQTT.URL)
			break
		}
		switch u.Scheme {
		case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
		default:
			bad("mqtt.url", "scheme %q is not one of tcp, mqtt, ssl, tls, mqtts, ws, wss", u.Scheme)
		}
		if u.User != nil {
			bad("mqtt.url", "must not hold credentials; use mqtt.username and mqtt.password")
		}
	}
	if c.Store.Backend == "tsdb" && c.Has(RoleDashboard) && !c.Has(RoleIngest) {
		bad("roles", "the dashboard role without ingest would read an embedded store (store.backend tsdb) nobody writes; run them together or use store.backend influx")
	}
	t := c.MQTT.ClientTLS
	if (t.Cert == "") != (t.Key == "") {
		bad("mqtt.client_tls.cert", "mqtt.client_tls.cert and mqtt.client_tls.key go together")
	}
	for key, f := range map[string]string{"mqtt.client_tls.ca": t.CA, "mqtt.client_tls.cert": t.Cert, "mqtt.client_tls.key": t.Key} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				bad(key, "%v", err)
			}
		}
	}
}
