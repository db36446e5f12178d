/**
 * A table of an HTML page Baton renders (the coordinator's dashboard), read back as text: the
 * header cells and each row's cells, tags dropped and entities decoded. For Baton's own markup
 * only (one `<table id>` each, no nesting), not a general HTML parser.
 */
export interface HtmlTable {
  header: string[];
  rows: string[][];
}

const ENTITIES: Record<string, string> = { '&lt;': '<', '&gt;': '>', '&quot;': '"', '&#39;': "'", '&amp;': '&' };

function text(cellHtml: string): string {
  return cellHtml.replace(/<[^>]*>/g, '').replace(/&(lt|gt|quot|#39|amp);/g, (e) => ENTITIES[e]!);
}

function cells(rowHtml: string, tag: 'th' | 'td'): string[] {
  return [...rowHtml.matchAll(new RegExp(`<${tag}>(.*?)</${tag}>`, 'gs'))].map((m) => text(m[1]!));
}

export function htmlTable(html: string, id: string): HtmlTable {
  const start = html.indexOf(`<table id="${id}">`);
  if (start < 0) throw new Error(`the page has no table "${id}"`);
  const body = html.slice(start, html.indexOf('</table>', start));
  const rows = [...body.matchAll(/<tr>(.*?)<\/tr>/gs)].map((m) => m[1]!);
  return { header: cells(rows[0] ?? '', 'th'), rows: rows.slice(1).map((r) => cells(r, 'td')) };
}
