import type { ZodErrorMap } from "./ZodError.js";
import defaultErrorMap from "./locales/en.js";


export { defaultErrorMap };

export function setErrorMap(map: ZodErrorMap) {
  overrideErrorMap = map;
}

export function getErrorMap() {
  return overrideErrorMap;
}
