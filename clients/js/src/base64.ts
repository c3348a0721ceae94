/** Base64 (standard or URL alphabet, padded or not) without `atob`, which mini programs lack. */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Decodes base64 (`b64` of a message, or a JWT part) into bytes. */
export function decodeBase64(s: string): Uint8Array {
  s = s.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
  const out = new Uint8Array((s.length * 3) >> 2);
  let bits = 0;
  let n = 0;
  let j = 0;
  for (const c of s) {
    bits = (bits << 6) | ALPHABET.indexOf(c);
    n += 6;
    if (n >= 8) {
      n -= 8;
      out[j++] = (bits >> n) & 255;
    }
  }
  return out;
}

/** The claims of a JWT (not verified: only to read `exp` and `groups`), or undefined. */
export function jwtClaims(token: string): { exp?: number; groups?: string[]; channels?: string[] } | undefined {
  try {
    return JSON.parse(String.fromCharCode(...decodeBase64(token.split(".")[1])));
  } catch {
    return undefined;
  }
}
