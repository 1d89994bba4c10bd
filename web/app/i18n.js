// Spanish (default) and English (?lang=en). Accessible names of controls come from here:
// the English ones are those scripted tests and screen readers look for (issue 12).
export const STRINGS = {
  en: {
    title: "Web phone", user: "User", password: "Password", login: "Log in", logout: "Log out",
    number: "Number", call: "Call", answer: "Answer", reject: "Reject", hangup: "Hang up",
    hold: "Hold", resume: "Resume", transfer: "Transfer", mute: "Mute", keypad: "Keypad",
    del: "Delete", settings: "Settings", close: "Close",
    ready: "Ready", calling: "Calling", ringing: "Ringing", connected: "Connected", onHold: "On hold",
    ended: "Call ended", failed: "Failed: {reason}",
    registered: "Online", unregistered: "Offline", connecting: "Connecting…",
    incoming: "Incoming call", waiting: "Call waiting", answerHolds: "Answering holds the current call",
    transferTo: "Transfer to", blind: "Transfer now", consult: "Consult first", complete: "Complete transfer",
    cancel: "Cancel", microphone: "Microphone", speaker: "Speaker", language: "Language",
    defaultDevice: "Default", tooLong: "number too long (at most {n} digits)", empty: "dial a number first",
    loginFailed: "Wrong user or password", loginBanned: "Too many attempts: try again later",
    loginError: "Cannot log in: {reason}", sipMissing: "the SIP library is not installed (run ./scripts/install.sh)",
    extension: "Extension {ext}", smartButtons: "Quick dial", onHoldShort: "held", registration: "registration",
    noMic: "no microphone", busy: "busy", declined: "declined", notFound: "not found", unavailable: "unavailable",
  },
  es: {
    title: "Teléfono web", user: "Usuario", password: "Contraseña", login: "Entrar", logout: "Salir",
    number: "Número", call: "Llamar", answer: "Contestar", reject: "Rechazar", hangup: "Colgar",
    hold: "Retener", resume: "Recuperar", transfer: "Transferir", mute: "Silenciar", keypad: "Teclado",
    del: "Borrar", settings: "Ajustes", close: "Cerrar",
    ready: "Preparado", calling: "Llamando", ringing: "Sonando", connected: "Conectado", onHold: "En espera",
    ended: "Llamada finalizada", failed: "Error: {reason}",
    registered: "En línea", unregistered: "Sin conexión", connecting: "Conectando…",
    incoming: "Llamada entrante", waiting: "Llamada en espera", answerHolds: "Al contestar se retiene la llamada actual",
    transferTo: "Transferir a", blind: "Transferir ya", consult: "Consultar antes", complete: "Completar transferencia",
    cancel: "Cancelar", microphone: "Micrófono", speaker: "Altavoz", language: "Idioma",
    defaultDevice: "Predeterminado", tooLong: "número demasiado largo (máximo {n} dígitos)", empty: "marque un número",
    loginFailed: "Usuario o contraseña incorrectos", loginBanned: "Demasiados intentos: inténtelo más tarde",
    loginError: "No se puede entrar: {reason}", sipMissing: "falta la librería SIP (ejecute ./scripts/install.sh)",
    extension: "Extensión {ext}", smartButtons: "Marcación rápida", onHoldShort: "retenida", registration: "registro",
    noMic: "sin micrófono", busy: "ocupado", declined: "rechazada", notFound: "no existe", unavailable: "no disponible",
  },
};

export function pickLang(configured) {
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked === "en" || asked === "es") return asked;
  return configured === "en" ? "en" : "es";
}

export function translator(lang) {
  const table = STRINGS[lang] || STRINGS.es;
  return (key, vars = {}) => (table[key] ?? key).replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}
