// Package hub assembles fieldhub's parts into one running hub: registry,
// time-series store, ingest pipeline, embedded broker and HTTP server. It
// owns their start and their ordered stop; cmd/fieldhub only parses flags
// and calls it, and end-to-end tests run the same wiring on :0 ports.
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/ingest"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/store/influx"
	"github.com/fieldhub/fieldhub/store/tsdb"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Hub is a running fieldhub.
type Hub struct {
	cfg     *config.Config
	log     *slog.Logger
	metrics *prometheus.Registry

	Registry *registry.Registry
	Store    store.Store
	Ingest   *ingest.Pipeline
	Broker   *broker.Broker
	// Events carries live events (readings, presence, commands,
	// rejections) to the HTTP API's event stream.
	Events *dashboard.Events
	// Commands is the command ledger and twin service (hub/commands.go).
	Commands *command.Service

	roleState // roles.go: external broker clients, the Prometheus API

	httpSrv *http.Server
	httpLn  net.Listener
	httpErr chan error
	stopped bool
}

// Addrs are the addresses a hub listens on, as bound (":0" resolved).
type Addrs struct {
	MQTT    string `json:"mqtt,omitempty"`
	WS      string `json:"ws,omitempty"`
	TLS     string `json:"tls,omitempty"`
	HTTP    string `json:"http"`
	PID     int    `json:"pid"`
	DataDir string `json:"data_dir"`
}

// RunFile is written into data_dir while the hub runs, so the CLI and tests
// find its HTTP API (and its ports when they were ":0").
const RunFile = "hub.json"

// AdminTokenFile is where the first start writes the admin API token.
const AdminTokenFile = "admin.token"

// New opens the registry and the store. Start serves.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (h *Hub, err error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	h = &Hub{cfg: cfg, log: log, metrics: prometheus.NewRegistry(), httpErr: make(chan error, 1), Events: dashboard.NewEvents(256)}
	h.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	defer func() {
		if err != nil {
			h.closeStores()
		}
	}()

	h.Registry, err = registry.Open(ctx, filepath.Join(cfg.DataDir, "registry.db"), log)
	if err != nil {
		return nil, fmt.Errorf("open registry: %w", err)
	}
	if err := h.Registry.ResetPresence(ctx); err != nil {
		return nil, fmt.Errorf("reset presence: %w", err)
	}
	tokenPath := filepath.Join(cfg.DataDir, AdminTokenFile)
	created, err := h.Registry.EnsureAdminToken(ctx, tokenPath)
	if err != nil {
		return nil, fmt.Errorf("bootstrap admin token: %w", err)
	}
	if created {
		log.Info("created the admin API token; keep it secret", "file", tokenPath)
	}

	var minValid func() int64
	// The store serves ingest and the dashboard; a command worker has none.
	backend := cfg.Store.Backend
	if !cfg.Has(config.RoleIngest) && !cfg.Has(config.RoleDashboard) {
		backend = ""
	}
	switch backend {
	case "tsdb":
		s, err := tsdb.Open(tsdb.Options{
			Dir: filepath.Join(cfg.DataDir, "tsdb"), Retention: cfg.Store.Retention,
			OutOfOrderWindow: cfg.Store.OutOfOrderWindow, MaxFuture: cfg.Ingest.MaxFuture,
			Logger: log, Registerer: h.metrics,
		})
		if err != nil {
			return nil, fmt.Errorf("open embedded store: %w", err)
		}
		h.Store, minValid = s, s.MinValidTime
	case "influx":
		i := cfg.Store.Influx
		s, err := influx.Open(ctx, influx.Options{
			URL: i.URL, Token: i.Token, Org: i.Org, Bucket: i.Bucket, WriteTimeout: i.WriteTimeout,
			Logger: log, Registerer: h.metrics,
		})
		if err != nil {
			return nil, fmt.Errorf("open influx store: %w", err)
		}
		h.Store = s
	}

	if err := h.setupExternal(); err != nil { // roles.go
		return nil, err
	}
	if cfg.Has(config.RoleBroker) {
		if err := h.setupBroker(); err != nil {
			return nil, err
		}
	}
	if cfg.Has(config.RoleIngest) {
		h.Ingest, err = ingest.New(ingest.Options{
			Store: h.Store, Registry: h.Registry, Types: cfg.Types, MinValidTime: minValid, MaxAge: cfg.MaxReadingAge(),
			MaxFuture: cfg.Ingest.MaxFuture, QoS0Queue: cfg.Ingest.QoS0Queue,
			Publish:  h.publishErrorReport,
			OnCommit: h.publishReadings,
			OnReject: h.publishRejection,
			Logger:   log, Registerer: h.metrics,
		})
		if err != nil {
			return nil, fmt.Errorf("create ingest: %w", err)
		}
		h.ingestBus().Handle(telemetry.TopicTelemetry, h.handleTelemetry)
	}
	if cfg.Has(config.RoleCommand) {
		if h.Commands, err = h.setupCommands(); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// setupBroker creates the embedded broker.
func (h *Hub) setupBroker() (err error) {
	cfg := h.cfg
	h.Broker, err = broker.New(broker.Config{
		Addr: cfg.MQTT.Addr, WSAddr: cfg.MQTT.WSAddr,
		TLS:           broker.TLSConfig{Addr: cfg.MQTT.TLS.Addr, CertFile: cfg.MQTT.TLS.Cert, KeyFile: cfg.MQTT.TLS.Key, ClientCAFile: cfg.MQTT.TLS.ClientCA},
		MaxPacketSize: cfg.MQTT.MaxPacketSize, ConnectTimeout: cfg.MQTT.ConnectTimeout,
		ReceiveMaximum: cfg.MQTT.ReceiveMaximum, MaxInflight: cfg.MQTT.MaxInflight,
		MaxQueued: cfg.MQTT.MaxQueued, MaxClients: cfg.MQTT.MaxClients,
	}, broker.Deps{Auth: h.Registry, Presence: h.Registry, Logger: h.log, Registerer: h.metrics})
	if err != nil {
		return fmt.Errorf("create broker: %w", err)
	}
	h.Broker.AddObserver(presenceEvents{h.Events})
	return nil
}

// handleTelemetry hands a device's telemetry to ingest (from the embedded
// broker or an external broker's client).
func (h *Hub) handleTelemetry(ctx context.Context, m broker.Message) error {
	err := h.Ingest.Ingest(ctx, m.Device, m.Payload, m.QoS, m.Received)
	if errors.Is(err, ingest.ErrRejected) {
		return fmt.Errorf("%w: %w", broker.ErrRejected, err)
	}
	return err
}

// Start starts serving: the committer, then the broker, then HTTP. It
// writes data_dir/hub.json with the bound addresses.
func (h *Hub) Start(ctx context.Context) error {
	if h.Ingest != nil {
		h.Ingest.Start()
	}
	// Resume the command ledger before devices can connect.
	if h.Commands != nil {
		if err := h.Commands.Start(ctx); err != nil {
			return fmt.Errorf("start commands: %w", err)
		}
	}
	if h.Broker != nil {
		if err := h.Broker.Start(ctx); err != nil {
			return fmt.Errorf("start broker: %w", err)
		}
	}
	if err := h.startExternal(ctx); err != nil { // roles.go
		return fmt.Errorf("connect to the MQTT broker: %w", err)
	}
	handler, err := h.handler() // roles.go
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	ln, err := net.Listen("tcp", h.cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("listen http %s: %w", h.cfg.HTTP.Addr, err)
	}
	h.httpLn = ln
	h.httpSrv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { h.httpErr <- h.httpSrv.Serve(ln) }()

	a := h.Addrs()
	b, _ := json.Marshal(a)
	if err := os.WriteFile(filepath.Join(h.cfg.DataDir, RunFile), b, 0o600); err != nil {
		return fmt.Errorf("write run file: %w", err)
	}
	h.log.Info("fieldhub serving", "roles", strings.Join(h.cfg.Roles, ","), "mqtt", a.MQTT, "ws", a.WS, "tls", a.TLS, "mqtt_url", h.cfg.MQTT.URL,
		"http", a.HTTP, "data_dir", h.cfg.DataDir, "store", h.cfg.Store.Backend)
	// Tell a newcomer where to go and how to get in.
	h.log.Info("open the dashboard and log in with the admin token", "url", browseURL(a.HTTP),
		"token_file", filepath.Join(h.cfg.DataDir, AdminTokenFile))
	return nil
}

// browseURL turns a listen address into a URL a browser on this machine
// can open: an unspecified host (":8080", "[::]:8080") becomes localhost.
func browseURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// Addrs reports the bound addresses.
func (h *Hub) Addrs() Addrs {
	a := Addrs{PID: os.Getpid(), DataDir: h.cfg.DataDir}
	if h.Broker != nil {
		b := h.Broker.Addrs()
		a.MQTT, a.WS, a.TLS = b.TCP, b.WS, b.TLS
	}
	if h.httpLn != nil {
		a.HTTP = h.httpLn.Addr().String()
	}
	return a
}

// Stop shuts down in order: stop taking HTTP requests, stop the broker (no
// new messages), commit what ingest holds, close the store and registry.
func (h *Hub) Stop(ctx context.Context) error {
	if h.stopped {
		return nil
	}
	h.stopped = true
	var errs []error
	_ = os.Remove(filepath.Join(h.cfg.DataDir, RunFile))
	if h.Commands != nil {
		h.Commands.StopWaiting() // end long polls so Shutdown need not wait for them
	}
	h.Events.Close() // end live event streams so Shutdown need not wait for them
	if h.httpSrv != nil {
		if err := h.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop http: %w", err))
		}
	}
	if h.Broker != nil {
		if err := h.Broker.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop broker: %w", err))
		}
	}
	errs = append(errs, h.stopExternal(ctx)...) // roles.go: no more messages, the taken ones acknowledged
	if h.Commands != nil {
		if err := h.Commands.Stop(ctx); err != nil { // after the broker: no more events
			errs = append(errs, err)
		}
	}
	if h.Ingest != nil {
		if err := h.Ingest.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if h.promAPI != nil {
		_ = h.promAPI.Close()
	}
	errs = append(errs, h.closeStores())
	return errors.Join(errs...)
}

func (h *Hub) closeStores() error {
	var errs []error
	if h.Store != nil {
		if err := h.Store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	if h.Registry != nil {
		if err := h.Registry.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close registry: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ReadRunFile reads data_dir/hub.json of a running hub.
func ReadRunFile(dataDir string) (Addrs, error) {
	var a Addrs
	b, err := os.ReadFile(filepath.Join(dataDir, RunFile))
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("parse %s: %w", RunFile, err)
	}
	return a, nil
}
