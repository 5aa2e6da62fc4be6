package hub

import (
	"net/http"
	"time"

	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// httpHandler builds the HTTP side: API, live events, web UI, operations.
// It runs in Start, after the broker is listening, so the API can tell new
// devices the bound MQTT address.
func (h *Hub) httpHandler() http.Handler {
	b := h.Broker.Addrs()
	return dashboard.New(dashboard.Deps{
		Registry: h.Registry, Store: h.Store, Ingest: h.Ingest, Commands: h.Commands, Events: h.Events,
		Types:   h.cfg.Types,
		Info:    dashboard.Info{MQTT: b.TCP, WS: b.WS, TLS: b.TLS, Store: h.cfg.Store.Backend},
		Metrics: h.metrics, Registerer: h.metrics, Logger: h.log,
		Ready: func() error { return nil },
	})
}

// publishReadings feeds a committed batch to the live view: the reading
// rate, and reading events while someone watches. It runs on ingest's
// committer and costs an atomic add while nobody watches readings.
func (h *Hub) publishReadings(samples []telemetry.Sample) {
	h.Events.PublishSamples(samples)
}

func (h *Hub) publishRejection(dl registry.DeadLetter) {
	h.Events.PublishRejection(dl)
}

// presenceEvents reports devices coming and going as live events.
type presenceEvents struct{ ev *dashboard.Events }

func (p presenceEvents) DeviceConnected(id string, _ byte) {
	p.ev.Publish(dashboard.Event{Type: dashboard.EventPresence, Device: id, TS: time.Now().UnixMilli(), Data: map[string]any{"online": true}})
}

func (p presenceEvents) DeviceDisconnected(id string) {
	p.ev.Publish(dashboard.Event{Type: dashboard.EventPresence, Device: id, TS: time.Now().UnixMilli(), Data: map[string]any{"online": false}})
}

func (presenceEvents) DeviceSubscribed(string, string)  {}
func (presenceEvents) Delivered(string, string, []byte) {}
