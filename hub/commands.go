package hub

import (
	"fmt"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/dashboard"
)

// setupCommands creates the command service and wires it to the broker:
// device replies and twin reports go to its handlers, connection events
// to it as an observer. Call it in New after the broker is created (before
// the broker starts); then h.Commands.Start(ctx) in Start before the
// broker starts (it resumes the ledger), h.Commands.StopWaiting when HTTP
// starts shutting down, and h.Commands.Stop(ctx) in Stop after the broker
// stopped.
func (h *Hub) setupCommands() (*command.Service, error) {
	svc, err := command.New(command.Options{
		Ledger: h.Registry, Publisher: h.commandPublisher(), // roles.go: the embedded or an external broker
		DefaultTimeout: h.cfg.Commands.DefaultTimeout, MaxTimeout: h.cfg.Commands.MaxTimeout,
		Logger: h.log, Registerer: h.metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("create command service: %w", err)
	}
	h.registerCommands(svc) // roles.go
	if h.Events != nil {
		// Live view: every stored transition as a "command" event.
		// Events.Publish never blocks.
		svc.Subscribe(func(c command.Change) {
			h.Events.Publish(dashboard.Event{Type: "command", Device: c.Command.Device, TS: c.Command.UpdatedAt.UnixMilli(),
				Data: map[string]any{"id": c.Command.ID, "name": c.Command.Name, "from": c.From, "to": c.To}})
		})
	}
	return svc, nil
}

// RegisterCommands connects a command service to a broker (before the
// broker starts). Exported for tests that run the two without a hub.
func RegisterCommands(b *broker.Broker, svc *command.Service) {
	registerCommandHandlers(b, svc) // roles.go, shared with external brokers
	b.AddObserver(svc)
}

func incoming(m broker.Message) command.Incoming {
	return command.Incoming{Device: m.Device, Topic: m.TopicName, Payload: m.Payload, CorrelationData: m.CorrelationData}
}

// BrokerPublisher publishes the command service's messages through the
// embedded broker, at QoS 1.
type BrokerPublisher struct{ B *broker.Broker }

func (p BrokerPublisher) Publish(topic string, payload []byte, o command.PublishOptions) error {
	return p.B.Publish(topic, payload, broker.PublishOptions{
		QoS: 1, Retain: o.Retain, ResponseTopic: o.ResponseTopic, CorrelationData: o.CorrelationData,
		MessageExpiry: o.MessageExpiry, ContentType: o.ContentType,
	})
}

func (p BrokerPublisher) Connected(id string) bool { return p.B.Connected(id) }
