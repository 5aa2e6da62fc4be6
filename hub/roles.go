package hub

// Roles (config key roles, `fieldhub serve --roles ...`): which parts of
// the hub this process runs. All four by default, in one process around
// the embedded broker. Without the broker role, ingest and command are
// clients of an external broker (mqtt.url, package extmqtt): ingest takes
// telemetry through the shared subscription
// $share/fieldhub-ingest/devices/+/telemetry, so N such workers split the
// stream; command publishes commands and takes replies and twin reports
// through $share/fieldhub-command/.... docs/deploy.md has the layouts.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/extmqtt"
	"github.com/fieldhub/fieldhub/promapi"
	"github.com/fieldhub/fieldhub/store/tsdb"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Shared subscription groups of the external broker clients.
const (
	IngestGroup  = "fieldhub-ingest"
	CommandGroup = "fieldhub-command"
)

// PrometheusPrefix is where the Prometheus-compatible API is served (with
// the embedded store): Grafana's data source URL is http://hub:8080/prometheus.
const PrometheusPrefix = "/prometheus"

// roleState holds what the roles add to a Hub.
type roleState struct {
	// ingestMQTT and commandMQTT are the external broker clients (nil with
	// the embedded broker).
	ingestMQTT  *extmqtt.Client
	commandMQTT *extmqtt.Client
	promAPI     *promapi.API
	// announced are the devices the command service was told about (see
	// announceDevice).
	announced sync.Map
}

// messageBus is where device messages come from: the embedded broker or
// an external broker's client. Both take broker.Handlers.
type messageBus interface {
	Handle(kind telemetry.TopicKind, h broker.Handler)
}

// setupExternal creates the external broker clients the roles need; with
// the broker role there are none.
func (h *Hub) setupExternal() error {
	if h.cfg.Has(config.RoleBroker) {
		return nil
	}
	var err error
	if h.cfg.Has(config.RoleIngest) {
		if h.ingestMQTT, err = h.newClient(config.RoleIngest, IngestGroup); err != nil {
			return err
		}
	}
	if h.cfg.Has(config.RoleCommand) {
		if h.commandMQTT, err = h.newClient(config.RoleCommand, CommandGroup); err != nil {
			return err
		}
	}
	return nil
}

func (h *Hub) newClient(role, group string) (*extmqtt.Client, error) {
	m := h.cfg.MQTT
	id := m.ClientID
	if id == "" {
		var err error
		if id, err = extmqtt.DefaultClientID(h.cfg.DataDir); err != nil {
			return nil, err
		}
	}
	o := extmqtt.Options{
		URL: m.URL, ClientID: id + "-" + role, Username: m.Username, Password: m.Password,
		Group: group, Name: role, Logger: h.log, Registerer: h.metrics,
	}
	if u, err := url.Parse(m.URL); err == nil {
		switch u.Scheme {
		case "ssl", "tls", "mqtts", "wss":
			if o.TLS, err = extmqtt.TLSConfig(m.ClientTLS.CA, m.ClientTLS.Cert, m.ClientTLS.Key); err != nil {
				return nil, fmt.Errorf("config: mqtt.client_tls: %w", err)
			}
		}
	}
	c, err := extmqtt.New(o)
	if err != nil {
		return nil, fmt.Errorf("config: mqtt.url: %w", err)
	}
	return c, nil
}

// ingestBus is where telemetry comes from.
func (h *Hub) ingestBus() messageBus {
	if h.Broker != nil {
		return h.Broker
	}
	return h.ingestMQTT
}

// publishErrorReport sends a rejection report to devices/{id}/errors; it
// does not wait for the broker (ingest's Publish must not block).
func (h *Hub) publishErrorReport(topic string, payload []byte) error {
	o := broker.PublishOptions{QoS: 1}
	if h.Broker != nil {
		return h.Broker.Publish(topic, payload, o)
	}
	return h.ingestMQTT.PublishNoWait(topic, payload, o)
}

// commandPublisher is the command service's way to devices.
func (h *Hub) commandPublisher() command.Publisher {
	if h.Broker != nil {
		return BrokerPublisher{h.Broker}
	}
	return externalPublisher{h.commandMQTT}
}

// registerCommands wires device replies and twin reports to the command
// service, and with the embedded broker its connection events too.
func (h *Hub) registerCommands(svc *command.Service) {
	if h.Broker != nil {
		RegisterCommands(h.Broker, svc)
		return
	}
	registerCommandHandlers(h.commandMQTT, svc)
	// An external broker tells no one which devices are connected and
	// subscribed, so the service is told that a device is, once, when it
	// first has a command: the command is published right away and the
	// broker delivers it now or, to a device with a persistent session,
	// when it reconnects.
	svc.Subscribe(func(c command.Change) {
		if c.From == "" {
			h.announceDevice(svc, c.Command.Device)
		}
	})
}

// registerCommandHandlers takes device replies and twin reports from bus
// to the command service.
func registerCommandHandlers(bus messageBus, svc *command.Service) {
	bus.Handle(telemetry.TopicReply, func(ctx context.Context, m broker.Message) error {
		return svc.HandleReply(ctx, incoming(m))
	})
	bus.Handle(telemetry.TopicTwinReported, func(ctx context.Context, m broker.Message) error {
		err := svc.HandleReported(ctx, incoming(m))
		if errors.Is(err, command.ErrRejected) {
			return fmt.Errorf("%w: %w", broker.ErrRejected, err)
		}
		return err
	})
}

// announceDevice tells the command service, once per process, that a
// device may be sent commands (see registerCommands).
func (h *Hub) announceDevice(svc *command.Service, device string) {
	if _, loaded := h.announced.LoadOrStore(device, true); !loaded {
		svc.DeviceSubscribed(device, telemetry.TopicPrefix+device+"/commands/#")
	}
}

// externalPublisher publishes the command service's messages through the
// external broker at QoS 1. MQTT 3.1.1 carries no properties: devices read
// the command id and expiry from the payload.
type externalPublisher struct{ c *extmqtt.Client }

func (p externalPublisher) Publish(topic string, payload []byte, o command.PublishOptions) error {
	return p.c.Publish(topic, payload, broker.PublishOptions{QoS: 1, Retain: o.Retain})
}

// Connected reports whether the broker connection is up: whether the
// device is connected cannot be seen from here.
func (p externalPublisher) Connected(string) bool { return p.c.Connected() }

// startExternal connects the external clients, once ingest and the
// command service run. After a restart, the devices with pending commands
// are announced, so their commands go out again.
func (h *Hub) startExternal(ctx context.Context) error {
	if h.ingestMQTT != nil {
		if err := h.ingestMQTT.Start(ctx); err != nil {
			return fmt.Errorf("ingest: %w", err)
		}
	}
	if h.commandMQTT != nil {
		if err := h.commandMQTT.Start(ctx); err != nil {
			return fmt.Errorf("command: %w", err)
		}
		pending, err := h.Registry.PendingCommands(ctx, "")
		if err != nil {
			return fmt.Errorf("pending commands: %w", err)
		}
		for _, c := range pending {
			h.announceDevice(h.Commands, c.Device)
		}
	}
	return nil
}

// stopExternal stops taking messages and disconnects, after the handlers
// of those taken finished (so they are acknowledged).
func (h *Hub) stopExternal(ctx context.Context) []error {
	var errs []error
	for _, c := range []*extmqtt.Client{h.ingestMQTT, h.commandMQTT} {
		if c != nil {
			if err := c.Stop(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// ready is nil when the external clients are connected and subscribed.
func (h *Hub) ready() error {
	for _, c := range []*extmqtt.Client{h.ingestMQTT, h.commandMQTT} {
		if c != nil {
			if err := c.Ready(); err != nil {
				return err
			}
		}
	}
	return nil
}

// httpMounts are the dashboard role's extra handlers: the Prometheus API
// over the embedded store, and the auth hook for external brokers when
// auth_hook.secret is set.
func (h *Hub) httpMounts() ([]dashboard.Mount, error) {
	var ms []dashboard.Mount
	if s, ok := h.Store.(*tsdb.Store); ok {
		api, err := promapi.New(promapi.Options{Queryable: s.DB(), Logger: h.log, Registerer: h.metrics})
		if err != nil {
			return nil, err
		}
		h.promAPI = api
		ms = append(ms, dashboard.Mount{Methods: []string{http.MethodGet, http.MethodPost}, Path: PrometheusPrefix + "/",
			Handler: http.StripPrefix(PrometheusPrefix, api)})
	}
	if secret := h.cfg.AuthHook.Secret; secret != "" {
		ba, err := dashboard.NewBrokerAuth(dashboard.BrokerAuthOptions{Auth: h.Registry, Secret: secret, Logger: h.log, Registerer: h.metrics})
		if err != nil {
			return nil, err
		}
		ms = append(ms, dashboard.Mount{Methods: []string{http.MethodGet, http.MethodPost, http.MethodPut},
			Path: dashboard.BrokerAuthPrefix, Handler: ba, Public: true})
	}
	return ms, nil
}

// handler is the HTTP side of this process: the dashboard's with that
// role, else only the operations endpoints.
func (h *Hub) handler() (http.Handler, error) {
	if h.cfg.Has(config.RoleDashboard) {
		mounts, err := h.httpMounts()
		if err != nil {
			return nil, err
		}
		return h.httpHandler(mounts), nil
	}
	return h.opsHandler(), nil
}

// opsHandler serves a worker without the dashboard role: /healthz,
// /readyz, and /metrics for a bearer API token of this process's registry
// (its admin.token): the metrics name devices.
func (h *Hub) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	metrics := promhttp.HandlerFor(h.metrics, promhttp.HandlerOpts{})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if ok && tok != "" {
			if _, valid, err := h.Registry.AuthenticateAPIToken(r.Context(), tok); err != nil {
				http.Error(w, "authentication failed", http.StatusInternalServerError)
				return
			} else if valid {
				metrics.ServeHTTP(w, r)
				return
			}
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub"`)
		http.Error(w, "an API token (Authorization: Bearer) is required", http.StatusUnauthorized)
	})
	return mux
}
