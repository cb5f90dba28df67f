/* Packet dissection for the detail tree: link layer, IPv4/IPv6, TCP/UDP/ICMP.
 * App.decode(bytes, linkType) → [{label, off, len, kids: [...]}]; off/len locate the bytes
 * in the hex dump. Unknown or cut layers stay bytes (the tree just stops there). */
var App = window.App || (window.App = {});

(function () {
  "use strict";
  var fmt = function () { return App.ui.fmt; };

  function u16(b, o) { return (b[o] << 8) | b[o + 1]; }
  function u32(b, o) { return ((b[o] << 24) >>> 0) + (b[o + 1] << 16) + (b[o + 2] << 8) + b[o + 3]; }
  function hex(n, w) { var s = n.toString(16); while (s.length < (w || 2)) s = "0" + s; return "0x" + s; }
  function mac(b, o) {
    var out = [];
    for (var i = 0; i < 6; i++) out.push((b[o + i] < 16 ? "0" : "") + b[o + i].toString(16));
    return out.join(":");
  }
  function ip4(b, o) { return b[o] + "." + b[o + 1] + "." + b[o + 2] + "." + b[o + 3]; }
  function ip6(b, o) {
    var g = [];
    for (var i = 0; i < 8; i++) g.push(u16(b, o + 2 * i).toString(16));
    // Compress the longest run of zero groups (RFC 5952).
    var best = -1, bestLen = 1, run = -1;
    for (i = 0; i <= 8; i++) {
      if (i < 8 && g[i] === "0") { if (run < 0) run = i; }
      else if (run >= 0) { if (i - run > bestLen) { best = run; bestLen = i - run; } run = -1; }
    }
    if (best < 0) return g.join(":");
    return g.slice(0, best).join(":") + "::" + g.slice(best + bestLen).join(":");
  }
  function node(label, off, len, kids) { return {label: label, off: off, len: len, kids: kids || null}; }

  var ETHER = {0x0800: "IPv4", 0x86dd: "IPv6", 0x0806: "ARP", 0x8100: "802.1Q"};

  function dissect(b, linkType) {
    var tree = [], n = b.length;
    tree.push(node("Frame: " + n + " bytes captured", 0, n));
    var off = 0, etype = null, kids;
    if (linkType === 1 && n >= 14) {                       // Ethernet
      etype = u16(b, 12);
      kids = [node("Destination: " + mac(b, 0), 0, 6), node("Source: " + mac(b, 6), 6, 6)];
      off = 14;
      while ((etype === 0x8100 || etype === 0x88a8) && n >= off + 4) {
        kids.push(node("VLAN: id " + (u16(b, off) & 0xfff) + ", priority " + (b[off] >> 5), off - 2, 4));
        etype = u16(b, off + 2); off += 4;
      }
      kids.push(node("Type: " + (ETHER[etype] || hex(etype, 4)), off - 2, 2));
      tree.push(node("Ethernet II, Src: " + mac(b, 6) + ", Dst: " + mac(b, 0), 0, off, kids));
    } else if (linkType === 113 && n >= 16) {              // Linux cooked v1
      etype = u16(b, 14); off = 16;
      tree.push(node("Linux cooked capture v1, protocol " + (ETHER[etype] || hex(etype, 4)), 0, 16));
    } else if (linkType === 276 && n >= 20) {              // Linux cooked v2
      etype = u16(b, 0); off = 20;
      tree.push(node("Linux cooked capture v2, protocol " + (ETHER[etype] || hex(etype, 4)), 0, 20));
    } else if (linkType === 0 && n >= 4) {                 // BSD loopback: host-order family
      var fam = b[0] || b[3];
      etype = fam === 2 ? 0x0800 : (fam === 24 || fam === 28 || fam === 30 || fam === 10) ? 0x86dd : null;
      off = 4;
      tree.push(node("Null/Loopback, family " + fam, 0, 4));
    } else if (linkType === 101 || linkType === 12 || linkType === 228 || linkType === 229) {
      etype = n && (b[0] >> 4) === 6 ? 0x86dd : 0x0800;   // raw IP
    }
    if (etype === 0x0800) ipv4(b, off, tree);
    else if (etype === 0x86dd) ipv6(b, off, tree);
    else if (etype === 0x0806 && n >= off + 28) arp(b, off, tree);
    else if (off < n) tree.push(node("Data: " + (n - off) + " bytes", off, n - off));
    return tree;
  }

  function arp(b, o, tree) {
    var op = u16(b, o + 6);
    tree.push(node("ARP " + (op === 1 ? "request" : op === 2 ? "reply" : "op " + op) + ": " +
      ip4(b, o + 14) + " \u2192 " + ip4(b, o + 24), o, 28, [
      node("Sender MAC: " + mac(b, o + 8), o + 8, 6), node("Sender IP: " + ip4(b, o + 14), o + 14, 4),
      node("Target MAC: " + mac(b, o + 18), o + 18, 6), node("Target IP: " + ip4(b, o + 24), o + 24, 4)]));
  }

  function ipv4(b, o, tree) {
    if (b.length < o + 20) return tree.push(node("IPv4 (truncated)", o, b.length - o));
    var ihl = (b[o] & 15) * 4, total = u16(b, o + 2), proto = b[o + 9], flags = b[o + 6] >> 5;
    var frag = u16(b, o + 6) & 0x1fff;
    var kids = [
      node("Version: 4, header length: " + ihl + " bytes", o, 1),
      node("DSCP: " + (b[o + 1] >> 2) + ", ECN: " + (b[o + 1] & 3), o + 1, 1),
      node("Total length: " + total, o + 2, 2),
      node("Identification: " + hex(u16(b, o + 4), 4) + " (" + u16(b, o + 4) + ")", o + 4, 2),
      node("Flags: " + [flags & 2 ? "DF" : "", flags & 1 ? "MF" : ""].filter(Boolean).join(", ") +
        (flags & 3 ? "" : "none") + ", fragment offset: " + frag * 8, o + 6, 2),
      node("Time to live: " + b[o + 8], o + 8, 1),
      node("Protocol: " + fmt().proto(proto) + " (" + proto + ")", o + 9, 1),
      node("Header checksum: " + hex(u16(b, o + 10), 4), o + 10, 2),
      node("Source: " + ip4(b, o + 12), o + 12, 4),
      node("Destination: " + ip4(b, o + 16), o + 16, 4)];
    tree.push(node("Internet Protocol Version 4, Src: " + ip4(b, o + 12) + ", Dst: " + ip4(b, o + 16),
      o, ihl, kids));
    var end = Math.min(b.length, o + Math.max(total, ihl));
    if (frag) return tree.push(node("Fragment data: " + (end - o - ihl) + " bytes", o + ihl, end - o - ihl));
    transport(b, o + ihl, end, proto, tree);
  }

  function ipv6(b, o, tree) {
    if (b.length < o + 40) return tree.push(node("IPv6 (truncated)", o, b.length - o));
    var plen = u16(b, o + 4), next = b[o + 6];
    tree.push(node("Internet Protocol Version 6, Src: " + ip6(b, o + 8) + ", Dst: " + ip6(b, o + 24), o, 40, [
      node("Traffic class: " + hex(((u16(b, o) >> 4) & 0xff)), o, 2),
      node("Flow label: " + hex(u32(b, o) & 0xfffff, 5), o + 1, 3),
      node("Payload length: " + plen, o + 4, 2),
      node("Next header: " + fmt().proto(next) + " (" + next + ")", o + 6, 1),
      node("Hop limit: " + b[o + 7], o + 7, 1),
      node("Source: " + ip6(b, o + 8), o + 8, 16),
      node("Destination: " + ip6(b, o + 24), o + 24, 16)]));
    var p = o + 40, end = Math.min(b.length, p + plen);
    // Skip the common extension headers (hop-by-hop, routing, destination options).
    while ((next === 0 || next === 43 || next === 60) && end >= p + 8) {
      var hl = (b[p + 1] + 1) * 8;
      tree.push(node("IPv6 extension header " + next + ": " + hl + " bytes", p, hl));
      next = b[p]; p += hl;
    }
    transport(b, p, end, next, tree);
  }

  var TCPF = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
  function transport(b, o, end, proto, tree) {
    if (proto === 6 && end >= o + 20) {
      var hl = (b[o + 12] >> 4) * 4, fl = b[o + 13], names = [];
      TCPF.forEach(function (f, i) { if (fl & (1 << i)) names.push(f); });
      var src = u16(b, o), dst = u16(b, o + 2), kids = [
        node("Source port: " + src, o, 2), node("Destination port: " + dst, o + 2, 2),
        node("Sequence number: " + u32(b, o + 4), o + 4, 4),
        node("Acknowledgment number: " + u32(b, o + 8), o + 8, 4),
        node("Header length: " + hl + " bytes", o + 12, 1),
        node("Flags: " + hex(fl) + " (" + names.join(", ") + ")", o + 13, 1),
        node("Window: " + u16(b, o + 14), o + 14, 2),
        node("Checksum: " + hex(u16(b, o + 16), 4), o + 16, 2),
        node("Urgent pointer: " + u16(b, o + 18), o + 18, 2)];
      if (hl > 20) kids.push(node("Options: " + (hl - 20) + " bytes", o + 20, hl - 20));
      tree.push(node("Transmission Control Protocol, Src Port: " + src + ", Dst Port: " + dst +
        ", Len: " + Math.max(0, end - o - hl), o, Math.min(hl, end - o), kids));
      payload(b, o + hl, end, tree);
    } else if (proto === 17 && end >= o + 8) {
      var s = u16(b, o), d = u16(b, o + 2);
      tree.push(node("User Datagram Protocol, Src Port: " + s + ", Dst Port: " + d, o, 8, [
        node("Source port: " + s, o, 2), node("Destination port: " + d, o + 2, 2),
        node("Length: " + u16(b, o + 4), o + 4, 2), node("Checksum: " + hex(u16(b, o + 6), 4), o + 6, 2)]));
      payload(b, o + 8, end, tree);
    } else if ((proto === 1 || proto === 58) && end >= o + 4) {
      var name = proto === 1 ? "Internet Control Message Protocol" : "Internet Control Message Protocol v6";
      tree.push(node(name + ", type " + b[o] + ", code " + b[o + 1], o, Math.min(8, end - o), [
        node("Type: " + b[o], o, 1), node("Code: " + b[o + 1], o + 1, 1),
        node("Checksum: " + hex(u16(b, o + 2), 4), o + 2, 2)]));
      payload(b, o + 8, end, tree);
    } else if (o < end) {
      tree.push(node("Data: " + (end - o) + " bytes", o, end - o));
    }
  }

  function payload(b, o, end, tree) {
    if (o >= end) return;
    var text = "", printable = 0, n = Math.min(end, o + 200);
    for (var i = o; i < n; i++) {
      var c = b[i];
      if ((c >= 32 && c < 127) || c === 9 || c === 10 || c === 13) printable++;
    }
    var line = "";
    if (printable / (n - o) > 0.9) {
      for (i = o; i < n && b[i] !== 13 && b[i] !== 10; i++) line += String.fromCharCode(b[i]);
      text = line ? ": \u201c" + line + "\u201d" : "";
    }
    tree.push(node("Payload: " + (end - o) + " bytes" + text, o, end - o));
  }

  App.decode = dissect;
  App.decode.hexToBytes = function (h) {
    var out = new Uint8Array(h.length >> 1);
    for (var i = 0; i < out.length; i++) out[i] = parseInt(h.substr(i * 2, 2), 16);
    return out;
  };
})();
