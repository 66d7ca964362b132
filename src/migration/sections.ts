/**
 * The one mapping between a VM's ordered list of {@linkcode Migratable}s and migration sections,
 * both ways. The machine supplies the list (`vm:kernel`, `vcpu:<i>`, devices, in restore order);
 * the source saves it with {@linkcode saveSections}, the destination applies it with
 * {@linkcode restoreSections}. Tests go through the same two functions.
 * @module
 */
import type { Migratable } from "../devices/device.ts";
import { checkStateVersion } from "../devices/state_fields.ts";
import { decodeState, encodeState } from "./state_codec.ts";
import type { Section } from "./vm_port.ts";

/** One section per item, in the list's order (called paused). */
export function saveSections(items: readonly Migratable[]): Section[] {
  return items.map((m) => ({ id: m.id, version: m.stateVersion, payload: encodeState(m.save()) }));
}

/**
 * Applies untrusted sections to `items`. Before anything is applied it checks that every item has
 * exactly one section, that no section names an item this VM lacks, that each version is one the
 * item reads, and that every payload decodes; then each item validates and applies its own state,
 * in the list's order.
 * @throws {Error | TypeError | RangeError} naming the section (and the field, from the item)
 */
export function restoreSections(items: readonly Migratable[], sections: readonly Section[]): void {
  const byId = new Map<string, Section>();
  for (const s of sections) {
    if (byId.has(s.id)) throw new Error(`Cannot restore VM: section '${s.id}' appears twice`);
    byId.set(s.id, s);
  }
  const planned = items.map((m) => {
    const s = byId.get(m.id);
    if (!s) throw new Error(`Cannot restore VM: section '${m.id}' is missing`);
    byId.delete(m.id);
    checkStateVersion(m.id, s.version, m.minStateVersion, m.stateVersion);
    return { m, version: s.version, state: decodeState(s.payload) };
  });
  const unknown = [...byId.keys()][0];
  if (unknown !== undefined) {
    throw new Error(`Cannot restore VM: unknown section '${unknown}' (a device this VM lacks)`);
  }
  for (const p of planned) p.m.restore(p.state, p.version);
}
