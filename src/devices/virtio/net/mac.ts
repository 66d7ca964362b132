/**
 * MAC addresses as the command line writes them (`mac=52:54:00:12:34:56`). Apart from the device
 * so that parsing a command line does not load virtio-net.
 * @module
 */

/** Parses `52:54:00:12:34:56`. */
export function parseMac(text: string, deviceId: string): Uint8Array {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(
    text,
  );
  if (!m) {
    throw new SyntaxError(
      `Cannot parse mac '${text}' of '${deviceId}': expected six hex bytes like '52:54:00:12:34:56'`,
    );
  }
  const mac = Uint8Array.from(m.slice(1).map((h) => parseInt(h, 16)));
  if (mac[0]! & 1) {
    throw new RangeError(`Cannot use mac '${text}' of '${deviceId}': it is a multicast address`);
  }
  return mac;
}

/** Formats a MAC. */
export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, "0")).join(":");
}
