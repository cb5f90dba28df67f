/* What the packet list shows of a packet: its columns (title, width, sort key, text), the
 * Info text, Wireshark's default colouring rule, and the user's column choices kept in
 * localStorage (widths, hidden columns, sort, relative or absolute time).
 *
 * Colouring: the rules and colours of Wireshark's default `colorfilters` file (Wireshark,
 * GPL-2.0-or-later; only the rule names, their order and their RGB values are taken), applied
 * where a PACKET's fields decide the rule; the colours are CSS variables in app.css with a
 * dark variant. Rules that need dissection we do not have (Bad TCP, HSRP/STP/OSPF state
 * changes, SCTP ABORT, TTL low, checksum errors, DCERPC, System Event) are left out. */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var fmt = App.ui.fmt;
  var KEY = "apppaccap_packet_columns";

  /* Relative time: seconds since the capture's first packet, 6 decimals as Wireshark.
   * FILETIMEs are 100 ns ticks; a JS number holds today's to 32 ticks (3.2 µs). */
  function rel(p, origin) {
    if (!origin) return "";
    var s = (p.Time - origin) / 1e7, neg = s < 0;
    return (neg ? "-" : "") + Math.abs(s).toFixed(6);
  }

  var TCP_RE = /^TCP (\S+) \u2192 (\S+) (\[[^\]]*\].*)$/, UDP_RE = /^UDP \S+ \u2192 \S+ (Len=\d+)$/;

  /* Info: the server's application-layer Info when the packet has one, else the transport
   * summary the way Wireshark's Info column writes it ("52302 → 80 [SYN] Seq=… Len=0"). */
  function info(p) {
    if (p.Info) return p.Info;
    var s = p.Summary || "", m;
    if (p.Protocol === 6 && (m = TCP_RE.exec(s))) return p.SrcPort + " \u2192 " + p.DstPort + " " + m[3];
    if (p.Protocol === 17 && (m = UDP_RE.exec(s))) return p.SrcPort + " \u2192 " + p.DstPort + " " + m[1];
    return s;
  }

  /* TCP flags from the summary's "[SYN, ACK]"; null when the summary does not list them. */
  function tcpFlags(p) {
    if (p.Protocol !== 6) return null;
    var m = /^TCP \S+ \u2192 \S+ \[([^\]]*)\]/.exec(p.Summary || "");
    return m ? m[1].split(", ") : null;
  }
  function hasPort(p, ports) { return ports.indexOf(p.SrcPort) >= 0 || ports.indexOf(p.DstPort) >= 0; }
  function payloadLen(p) { var m = /\bLen=(\d+)/.exec(p.Summary || ""); return m ? Number(m[1]) : 0; }
  var HTTP_RE = /^(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) \S+ HTTP\/\d|^HTTP\/\d/;
  var ICMP_ERR = /^ICMP (Destination unreachable|Source quench|Redirect|Time-to-live exceeded)/;
  var ICMP6_ERR = /^ICMPv6 (Destination unreachable|Packet too big|Time exceeded|Parameter problem)/;
  function multicast(ip) {
    if (!ip) return false;
    if (ip.indexOf(":") >= 0) return /^ff/i.test(ip);
    var a = Number(ip.split(".")[0]);
    return ip === "255.255.255.255" || (a >= 224 && a <= 239);
  }

  /* Wireshark's default rules in its order, first match wins → a CSS class. */
  var RULES = [
    ["wc-icmperr", function (p) { return (p.Protocol === 1 && ICMP_ERR.test(p.Summary)) || (p.Protocol === 58 && ICMP6_ERR.test(p.Summary)); }],
    ["wc-arp", function (p) { return /^ARP /.test(p.Summary || ""); }],
    ["wc-icmp", function (p) { return p.Protocol === 1 || p.Protocol === 58; }],
    ["wc-rst", function (p) { var f = tcpFlags(p); return !!f && f.indexOf("RST") >= 0; }],
    // smb || nbss || nbns || netbios: NetBIOS name/datagram service, session service with data
    ["wc-smb", function (p) {
      return (p.Protocol === 17 && hasPort(p, [137, 138])) || (p.Protocol === 6 && hasPort(p, [139, 445]) && payloadLen(p) > 0);
    }],
    ["wc-http", function (p) { return (p.Protocol === 6 && hasPort(p, [80])) || HTTP_RE.test(p.Info || ""); }],
    // hsrp || eigrp || ospf || bgp || vrrp || igmp (cdp, carp, gvrp, ismp are not IP)
    ["wc-routing", function (p) {
      return [2, 88, 89, 112].indexOf(p.Protocol) >= 0 || (p.Protocol === 17 && hasPort(p, [1985, 2029])) ||
        (p.Protocol === 6 && hasPort(p, [179]) && payloadLen(p) > 0);
    }],
    ["wc-synfin", function (p) { var f = tcpFlags(p); return !!f && (f.indexOf("SYN") >= 0 || f.indexOf("FIN") >= 0); }],
    ["wc-tcp", function (p) { return p.Protocol === 6; }],
    ["wc-udp", function (p) { return p.Protocol === 17; }],
    // eth[0] & 1: a broadcast or multicast destination, known here from the IP address
    ["wc-bcast", function (p) { return p.LinkType === 1 && multicast(p.DstIp); }]
  ];
  function colour(p) {
    for (var i = 0; i < RULES.length; i++) if (RULES[i][1](p)) return RULES[i][0];
    return "";
  }

  function text(s) { return String(s === undefined || s === null ? "" : s).toLowerCase(); }
  /* Columns. prio: which go first when the list is narrow (higher goes first). */
  var COLS = [
    {id: "no", title: "No.", w: 64, cls: "num", prio: 1, get: function (p) { return p.PacketId; }, text: function (p) { return p.PacketId; }},
    {id: "time", title: "Time", w: 100, wAbs: 178, prio: 1, get: function (p) { return p.Time; },
      text: function (p, o) { return o.absolute ? fmt.time(p.Time) : rel(p, o.origin); }},
    {id: "proc", title: "Process", w: 130, prio: 1, get: function (p) { return text(p.ProcessName); },
      text: function (p) { return p.ProcessName || "<unknown>"; }},
    {id: "pid", title: "PID", w: 62, cls: "num", prio: 3, get: function (p) { return p.Pid || 0; }, text: function (p) { return p.Pid || ""; }},
    {id: "tid", title: "Thread", w: 66, cls: "num", prio: 4, hidden: true, get: function (p) { return p.ThreadId || 0; },
      text: function (p) { return p.ThreadId || ""; }},
    {id: "src", title: "Source", w: 190, cls: "addr", prio: 1, get: function (p) { return text(fmt.endpoint(p.SrcIp, p.SrcPort)); },
      text: function (p) { return fmt.endpoint(p.SrcIp, p.SrcPort); }},
    {id: "dst", title: "Destination", w: 190, cls: "addr", prio: 1, get: function (p) { return text(fmt.endpoint(p.DstIp, p.DstPort)); },
      text: function (p) { return fmt.endpoint(p.DstIp, p.DstPort); }},
    {id: "proto", title: "Protocol", w: 72, prio: 1, get: function (p) { return fmt.proto(p.Protocol); }, text: function (p) { return fmt.proto(p.Protocol); }},
    {id: "len", title: "Length", w: 62, cls: "num", prio: 3, get: function (p) { return p.Length; }, text: function (p) { return p.Length; }},
    {id: "dir", title: "Dir", w: 54, prio: 3, get: function (p) { return p.Direction; },
      text: function (p) { return p.Direction === 0 ? "\u2193 in" : p.Direction === 1 ? "\u2191 out" : ""; }},
    {id: "info", title: "Info", w: 200, prio: 0, flex: true, get: function (p) { return text(info(p)); }, text: info}
  ];

  function load() {
    var s = null;
    try { s = JSON.parse(localStorage.getItem(KEY) || "null"); } catch (e) { s = null; }
    s = s && typeof s === "object" ? s : {};
    return {widths: s.widths && typeof s.widths === "object" ? s.widths : {},
      hidden: Array.isArray(s.hidden) ? s.hidden : COLS.filter(function (c) { return c.hidden; }).map(function (c) { return c.id; }),
      sort: s.sort && typeof s.sort.col === "string" && (s.sort.dir === 1 || s.sort.dir === -1) ? s.sort : null,
      absolute: s.absolute === true};
  }
  function save(state) {
    try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { /* private mode: this page only */ }
  }
  function reset() { try { localStorage.removeItem(KEY); } catch (e) { /* nothing kept */ } return load(); }

  App.packetCols = {COLS: COLS, info: info, colour: colour, relative: rel, load: load, save: save, reset: reset,
    byId: function (id) { return COLS.filter(function (c) { return c.id === id; })[0]; }};
})();
