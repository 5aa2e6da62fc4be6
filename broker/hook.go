package broker

import (
	"bytes"
	"context"
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldhub/fieldhub/telemetry"
)

// hook is the broker's mochi hook: authentication, the topic ACL, the
// handler dispatch, presence, observers and metrics.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "fieldhub" }

var hookProvides = []byte{
	mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
	mqtt.OnSessionEstablished, mqtt.OnDisconnect,
	mqtt.OnPacketRead, mqtt.OnPacketEncode, mqtt.OnPacketSent,
	mqtt.OnSubscribe, mqtt.OnSubscribed,
	mqtt.OnPublish, mqtt.OnPublishDropped,
	mqtt.OnQosPublish, mqtt.OnQosDropped,
	mqtt.OnWill, mqtt.OnClientExpired,
}

func (h *hook) Provides(b byte) bool { return bytes.IndexByte(hookProvides, b) >= 0 }

// connack picks the CONNACK code for a refusal: MQTT 5 reason codes are
// >= 0x80; MQTT 3.1.1 has its own return codes 1-5 (§3.2.2.3).
func connack(version byte, v5, v3 packets.Code) packets.Code {
	if version == 5 {
		return v5
	}
	return v3
}

// OnPacketRead sees every decoded packet before mochi handles it.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	b := h.b
	switch pk.FixedHeader.Type {
	case packets.Connect:
		// mochi refuses a password flag with an empty password as a
		// protocol error (0x82, not even a valid 3.1.1 code). Treat it as
		// no password, so the auth check answers with the proper code.
		if pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0 {
			pk.Connect.PasswordFlag = false
		}
		return pk, nil
	case packets.Publish:
		b.m.received.Inc()
	case packets.Puback, packets.Pubcomp:
		b.acked(cl, pk)
	}
	b.pres.touch(cl.ID, time.Now())
	return pk, nil
}

// OnConnect authenticates the device, before mochi's own CONNACK. A refusal
// writes the CONNACK here, because mochi answers a failed
// OnConnectAuthenticate with 0x86, which it maps to 3.1.1 code 5 (not
// authorized) where 4 (bad user name or password) is right.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	st := stateOf(cl.Net.Conn)
	if st == nil {
		return errors.New("connection not from a fieldhub listener")
	}
	code, reason := b.authenticate(pk)
	if reason != "" {
		b.m.authFailures.WithLabelValues(reason).Inc()
		st.setReason("auth_failed")
		b.log.Info("mqtt connect refused", "reason", reason, "client_id", truncate(pk.Connect.ClientIdentifier),
			"username", truncate(string(pk.Connect.Username)), "remote", cl.Net.Remote, "listener", cl.Net.Listener)
		_ = b.srv.SendConnack(cl, connack(pk.ProtocolVersion, code.v5, code.v3), false, nil)
		return errors.New("mqtt connect refused: " + reason)
	}
	id := cl.ID
	// A will passes the publish ACL. Checked now, because a will to
	// another device's commands topic would pass that device's read ACL
	// on delivery.
	if pk.Connect.WillFlag && !allowed(id, pk.Connect.WillTopic, actWill) {
		b.m.aclDenied.WithLabelValues(actWill.String()).Inc()
		b.log.Info("will message dropped: topic not allowed", "id", id, "topic", truncate(pk.Connect.WillTopic))
		cl.Properties.Will = mqtt.Will{}
	}
	// Outbound topic aliases would hide the topic from OnQosPublish (the
	// Delivered observer) and cost memory per client; publish full names.
	cl.Properties.Props.TopicAliasMaximum = 0
	b.limitSendQuota(cl)
	st.authed.Store(true)
	return nil
}

// limitSendQuota turns off mochi's send quota where MaxInflight suffices.
// The quota (the client's Receive Maximum) releases queued messages
// through Inflight.NextImmediate, which takes a read lock twice and can
// deadlock against a concurrent Publish to the client. When MaxInflight is
// no larger than the client's Receive Maximum (mochi caps that at
// MaxInflight anyway), MaxInflight alone keeps within the client's limit
// [MQTT-3.3.4-7]. Called at CONNECT and again once a taken-over session's
// inflight messages were inherited (mochi resets the quota there).
func (b *Broker) limitSendQuota(cl *mqtt.Client) {
	if rm := cl.Properties.Props.ReceiveMaximum; rm == 0 || rm >= b.cfg.MaxInflight {
		cl.State.Inflight.ResetSendQuota(0)
	}
}

type refusal struct{ v5, v3 packets.Code }

var (
	refuseNotAuthorized  = refusal{packets.ErrNotAuthorized, packets.Err3NotAuthorized}                       // 0x87 / 5
	refuseBadCredentials = refusal{packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword}  // 0x86 / 4
	refuseClientID       = refusal{packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid} // 0x85 / 2
	refuseUnavailable    = refusal{packets.ErrServerUnavailable, packets.Err3ServerUnavailable}               // 0x88 / 3
)

// authenticate applies ARCHITECTURE.md's rules: no anonymous access,
// username = device id, password = token, client id = device id. It
// returns the refusal and a metric reason, or "" to accept.
// The decision itself is CheckDevice (acl.go), shared with the HTTP hook
// for external brokers; this maps its reasons to CONNACK codes.
func (b *Broker) authenticate(pk packets.Packet) (refusal, string) {
	var user, pass string
	if pk.Connect.UsernameFlag {
		user = string(pk.Connect.Username)
	}
	if pk.Connect.PasswordFlag {
		pass = string(pk.Connect.Password)
	}
	ctx, cancel := context.WithTimeout(b.ctx, authTimeout)
	defer cancel()
	reason, err := CheckDevice(ctx, b.auth, pk.Connect.ClientIdentifier, user, pass)
	switch {
	case err != nil:
		b.log.Error("device authentication failed", "id", user, "error", err)
		return refuseUnavailable, "error"
	case reason == "":
		return refusal{}, ""
	case reason == RefusedAnonymous:
		return refuseNotAuthorized, reason
	case reason == RefusedClientIDMismatch:
		// 3.1.1 requires return code 2 when the server rejects the client
		// id [MQTT-3.1.3-9]; MQTT 5 has 0x85 for it.
		return refuseClientID, reason
	}
	return refuseBadCredentials, reason
}

// OnConnectAuthenticate accepts what OnConnect accepted (mochi asks after
// OnConnect; every refusal has been answered there).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	st := stateOf(cl.Net.Conn)
	return st != nil && st.authed.Load()
}

// OnACLCheck is mochi's check for publishes, subscription filters and
// each delivery to a client (ACL on read, so retained messages of other
// devices never reach a device).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	act := actRead
	if write {
		act = actPublish
	}
	ok := allowed(cl.ID, topic, act)
	if !ok && write {
		h.b.m.aclDenied.WithLabelValues(act.String()).Inc()
		h.b.log.Debug("publish denied", "id", cl.ID, "topic", truncate(topic))
	}
	return ok
}

// OnSubscribe counts denied filters; OnACLCheck refuses them (SUBACK 0x87,
// or 0x80 for 3.1.1) but is also asked for deliveries, which are no
// subscriptions.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	for _, f := range pk.Filters {
		if !cl.Net.Inline && !allowed(cl.ID, f.Filter, actRead) {
			h.b.m.aclDenied.WithLabelValues(actRead.String()).Inc()
			h.b.log.Debug("subscribe denied", "id", cl.ID, "filter", truncate(f.Filter))
		}
	}
	return pk
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			for _, o := range h.b.observers {
				o.DeviceSubscribed(cl.ID, f.Filter)
			}
		}
	}
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.b.limitSendQuota(cl)
	h.b.pres.touch(cl.ID, time.Now())
	h.b.deviceOnline(cl)
	// A device resuming a persistent session does not subscribe again
	// [MQTT-3.2.2-3]: report the subscriptions it inherited, so that what
	// waits for it (queued commands) is delivered now.
	for filter := range cl.State.Subscriptions.GetAll() {
		for _, o := range h.b.observers {
			o.DeviceSubscribed(cl.ID, filter)
		}
	}
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	b := h.b
	if st := stateOf(cl.Net.Conn); st != nil {
		cause := cl.StopCause() // the first reason mochi stopped the client for
		if cause == nil {
			cause = err
		}
		st.setReason(closeReason(cause, true, st))
	}
	if expire {
		b.forgetDeliveries(cl)
	}
	b.deviceOffline(cl)
}

// OnClientExpired: a kept session of a device that did not come back.
func (h *hook) OnClientExpired(cl *mqtt.Client) { h.b.forgetDeliveries(cl) }

func (b *Broker) forgetDeliveries(cl *mqtt.Client) {
	b.delMu.Lock()
	if p := b.deliveries[cl.ID]; p != nil && p.cl == cl {
		delete(b.deliveries, cl.ID)
	}
	b.delMu.Unlock()
}

// OnPacketEncode completes mochi's MQTT 5 CONNACK with the limits it does
// not announce itself (MQTT 5 §3.2.2.3).
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Disconnect && cl.Properties.ProtocolVersion < 5 {
		// mochi sends DISCONNECT to 3.1.1 clients too (session taken over,
		// shutdown, denied QoS>0 publish), but in 3.1.1 only clients send
		// it (§3.14): the server just closes the connection. An invalid
		// type makes WritePacket fail without writing, and mochi closes
		// the connection as it would anyway.
		pk.FixedHeader.Type = packets.Reserved
		return pk
	}
	if pk.FixedHeader.Type == packets.Connack && cl.Properties.ProtocolVersion == 5 &&
		pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = h.b.cfg.MaxPacketSize
		pk.Properties.SharedSubAvailableFlag = true
		pk.Properties.SharedSubAvailable = 0
	}
	return pk
}

func (h *hook) OnPacketSent(_ *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		h.b.m.sent.Inc()
	}
}

// OnPublish hands a device publish (already past the ACL) to the handler
// of its topic kind, before mochi acknowledges it.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	b := h.b
	retain := pk.FixedHeader.Retain
	// Device messages are for the hub, not for later subscribers; keeping
	// them would let a device fill memory with retained replies/{x}.
	pk.FixedHeader.Retain = false

	topic := telemetry.ParseTopic(pk.TopicName)
	handler := b.handlers[topic.Kind]
	if handler == nil {
		return pk, nil
	}
	start := time.Now()
	err := handler(b.ctx, Message{
		Device:          cl.ID,
		Topic:           topic,
		TopicName:       pk.TopicName,
		Payload:         pk.Payload,
		QoS:             pk.FixedHeader.Qos,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Retain:          retain,
		ContentType:     pk.Properties.ContentType,
		CorrelationData: pk.Properties.CorrelationData,
		Received:        start,
	})
	b.m.handlerSeconds.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		return pk, nil
	case errors.Is(err, ErrRejected):
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, packets.ErrPayloadFormatInvalid // PUBACK/PUBREC 0x99, not forwarded
		}
		return pk, packets.CodeSuccessIgnore // normal ack, not forwarded or retained
	case pk.FixedHeader.Qos == 0:
		b.m.dropped.WithLabelValues("handler_error").Inc()
		b.log.Warn("QoS 0 message dropped", "id", cl.ID, "topic", pk.TopicName, "error", err)
		return pk, packets.CodeSuccessIgnore
	default:
		// Not taken: no PUBACK, and disconnect so the device resends the
		// message after reconnecting ([MQTT-4.4.0-1]).
		b.log.Warn("message not taken; disconnecting the device so it resends", "id", cl.ID, "topic", pk.TopicName, "error", err)
		if st := stateOf(cl.Net.Conn); st != nil {
			st.setReason("handler_error")
		}
		if cl.Properties.ProtocolVersion == 5 {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerUnavailable)
		} else {
			cl.Stop(packets.ErrServerUnavailable)
		}
		return pk, packets.ErrRejectPacket // mochi: drop silently, no ack
	}
}

func (h *hook) OnPublishDropped(_ *mqtt.Client, _ packets.Packet) {
	h.b.m.dropped.WithLabelValues("queue_full").Inc()
}

// OnQosPublish remembers what an outbound QoS>0 packet id carries, for
// Observer.Delivered. mochi also calls it for the acks of inbound QoS 2,
// which are no publishes.
func (h *hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	b := h.b
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return
	}
	b.delMu.Lock()
	defer b.delMu.Unlock()
	p := b.deliveries[cl.ID]
	if p == nil || p.cl != cl {
		// A kept session's inflight messages are re-announced here when
		// the device reconnects, under its new session.
		p = &pending{cl: cl, msgs: make(map[uint16]delivery)}
		b.deliveries[cl.ID] = p
	}
	p.msgs[pk.PacketID] = delivery{topic: pk.TopicName, payload: pk.Payload}
}

// takeDelivery removes and returns what packet id carried in cl's session.
func (b *Broker) takeDelivery(cl *mqtt.Client, id uint16) (delivery, bool) {
	b.delMu.Lock()
	defer b.delMu.Unlock()
	p := b.deliveries[cl.ID]
	if p == nil || p.cl != cl {
		return delivery{}, false
	}
	d, ok := p.msgs[id]
	delete(p.msgs, id)
	return d, ok
}

// acked handles a PUBACK or PUBCOMP read from the device. It is the
// device's packet, unlike mochi's OnQosComplete, which also reports the
// broker's own PUBACKs of inbound publishes (whose packet ids are a
// separate number space).
func (b *Broker) acked(cl *mqtt.Client, pk packets.Packet) {
	d, ok := b.takeDelivery(cl, pk.PacketID)
	if !ok || pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		return
	}
	for _, o := range b.observers {
		o.Delivered(cl.ID, d.topic, d.payload)
	}
}

func (h *hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	if _, ok := b.takeDelivery(cl, pk.PacketID); ok {
		b.m.dropped.WithLabelValues("inflight_dropped").Inc()
	}
}

// OnWill is a second line behind OnConnect's will check: a will that is
// not allowed goes to the empty topic, which reaches nobody.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if !allowed(cl.ID, will.TopicName, actWill) {
		h.b.m.aclDenied.WithLabelValues(actWill.String()).Inc()
		return mqtt.Will{}, nil
	}
	will.Retain = false
	return will, nil
}

// truncate bounds client-chosen strings in logs.
func truncate(s string) string {
	const n = 160
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
