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
// mounts (roles.go) add the Prometheus API and the broker auth hook.
func (h *Hub) httpHandler(mounts []dashboard.Mount) http.Handler {
	d := dashboard.Deps{
		Registry: h.Registry, Store: h.Store, Events: h.Events,
		Types:   h.cfg.Types,
		Info:    dashboard.Info{Store: h.cfg.Store.Backend},
		Metrics: h.metrics, Registerer: h.metrics, Logger: h.log,
		Ready:  h.ready, // roles.go: the external broker connections
		Mounts: mounts,
	}
	// Roles this process does not run leave their routes out (or 503):
	// no typed nil pointers in the interfaces.
	if h.Ingest != nil {
		d.Ingest = h.Ingest
	}
	if h.Commands != nil {
		d.Commands = h.Commands
	}
	if h.Broker != nil {
		b := h.Broker.Addrs()
		d.Info.MQTT, d.Info.WS, d.Info.TLS = b.TCP, b.WS, b.TLS
	}
	return dashboard.New(d)
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
