// Package devicesim simulates fieldhub devices and generates MQTT load.
//
// A Profile (YAML) describes a fleet: device types, counts, and per-metric
// signal models that are deterministic for a seed. A Fleet runs it: each
// Device has its own MQTT connection, publishes on its interval, buffers
// while offline and flushes on reconnect, reconnects with backoff and
// jitter, answers commands and reports its twin, and injects the faults
// the profile asks for, counting each (Stats). Run adds expectations
// checked against the hub (Hub, FieldhubCLI); RunLoad is a lean load
// generator reporting throughput and publish→PUBACK latency.
//
// The MQTT client (paho) is an implementation detail: no paho type appears
// in this package's API.
package devicesim
