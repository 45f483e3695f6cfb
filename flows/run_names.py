"""Run names Prefect makes up, told apart from a name a person typed.

A flow run always has a name: Prefect's server and client make one up (coolname's two words, e.g.
`festive-barracuda`) when none is given, and the UI's Custom-run form fills its "Run Name" field with
one of its own (e.g. `gamma42-andromedae-nebula`) that a person may overwrite. `flow_run_namer`
(flows.reporting) renames a run after its recipe only when its name is one of these.

The UI's words are copied from the form's name generator in Prefect's bundled UI
(prefect/server/ui/assets/index-*.js); tests/unit/flows/test_run_names.py fails when a Prefect
release changes them.
"""

from __future__ import annotations

import re
from functools import cache

# the UI's names: GREEK[digits]-WORD[-SUFFIX]
UI_GREEK = frozenset(
    """
alpha beta chi delta epsilon eta gamma iota kappa lambda mu nu omega omicron phi pi psi rho
sigma tau theta upsilon xi zeta
""".split()
)
UI_WORDS = frozenset(
    """
acamar acanceh acanmul achanis achernar achrady acrab acrux actuncan acubens adachi adarak
adhara adhil adib adigeon adorn agassiz aglarond aguateca ain ajilon akaali akechi akita
akritiri akte alastria albali alchibah aldea aldebaran alfa alfirk algebar algedi algenib
algeron algieba algol algorab alhena alioth alkaid alkari alkes almak almeisan almuchil
alnair alnasl alnilam alnitak alonda alphard alphecca alpheratz alrescha alsafi alsuhail
altair alterf althos alture aludra alula alvarez alya amargosa amleth amroth ancona andevian
ando andoria andrast andrath andromedae andros anduin anfalas angmar angosia angrenost ankaa
annuminas anorien antede antica antliae antos aoki apodis aquarii aquilae arae arai archer
arcturus ardana argana argelius argonath argratha argus ariannus arietis aristotle arkab
arkaria arloff armus arneb arnor arrakis arret arthedain arvada asai asano aschelan ashikaga
ashina aso astral atalia atbar athos atifs atik atlec atrea aucdet aurelia aurigae auva
avenal avicenna axanar azanulbizar azha babbage babel baham bajor balakbal balamkku balancar
balosnee barad-dur baranduin barazinbar bardeen barisa barkon barradas barson barzan baten
bayliss becan beid bejucal belfalas beltane benecia benetnash benthos benzar bernard
bernoulli betazed betelguese bethe bilana bilaren binet blanca boas bohr bolarus bonampak
bootis bopak boraal boradis boreal boreth borka born boslic botein boyle bracas brahe
braslota brax brekka brinda broglie browder bruinen bryma buffon bundushathur bynaus caeli
caere cahal cait calakmul calanhad calder caldik caldonia caldos caleb calembel calenardhon
callinon calondia camelopardalis campeche campor camus cancri cancuen canis-majoris
canis-minoris canopius cansacbe canum-venaticorum capella caph capricorni caracol caradhras
carchost cardolan carema carinae carnel carnen carraya casperia cassiopeiae castal catulla
celbalrai celduin celebdil celtris centauri cerberus cerros cestus ceti chac chactun
chakalal chakokot chal chalna chaltok chamaeleontis chandra chapayal chaya cherika cheron
chiapa chichen chichmul chijoj chinaha chocola chojolom chomsky chorro chort circini ciril
cirrus civiltuk coba coltar columbae comae-berenices comitan consacbe copan copernicus
coridan corona coronae-australis coronae-borealis corozal corvan corvi crateris crick crucis
cuca cuello culuba curie cursa cuvier cygnet cygni dabih dagorlad dakala daled dalton danula
daran darwin davinci davlos davy dayos decos dekendi delb delinia delios delos delphini
delvos deneb denebola deneva denobula deriben descartes dessica detria devidia devos dimorus
dinaal diphda dirac doi donatu doradus doraf dorvan dorwinion dozaria draconis draken drayan
draygo draylax draylon drema dreon dschubba dubhe dulfim dulisian dunharrow dunia duniya
durenia duronom durthang dwimorberg dwimordene dytallix dzekilna dziban edasich edison
edoras efros egladil ehrlich eilenach einstein ekab ekos elanu elba elion ellora elostirion
eltanin emila eminiar enara encanto endicor endo enedwaith enif enya eotheod equulei erabus
erebor erech eregion erelas eriador eridani errai errikang erui esgaroth ethring euclid
euler evadne evendim evora excalbia exo fabrina fahleena fangorn fanuidhol faraday farius
faynos felton fendaus feris fermi feynman fina finnea firiendfeld firienholt fischer fleming
folde folnar fomalhaut forcas forlat forlindon forlond fornacis fornax fornost forochel
forodwaith foucault franklin freud furud gagarin galador galen galilei gallos galor galorda
galton galvin gamaris gamelan gamow ganalda garadius garenor garon gaspar gault gauss gedi
gema geminorum gemulon ghorusda gideon gienah gilrain glanduin glashow golana gomeisa gonal
gondor gorgoroth gorthos goto gramilia grazer greyling gruis gumarcaj gunabad gutenberg
gwathlo haakon hadar haeckel hakton halakal halana halee halifirien halii halka haller
halley hamal hanoli hanon hanoran hara harad harada harlond harnen harondor harrakis harrod
harvey hatano hawking hayashi heisenburg heka hekaras hemikek herschel heva hiraga hoarwell
hochob hoek hojo holactun holberg holna homam hondo hooke hopkins hori horologii hoshina
hotta hottar hotzuc huacutal hubble hullanta humboldt hupyria hurada hurkos huygens hydrae
hydri iadora ichmac ichmul ichpich iconia icor idran ikeda ikil ilari ilecom ilidaria
illyria imladris imloth ina inagaki inavar indi indri inferna ingraham inoue invernia
iraatan irtok ise isen ishida isshiki itamish ithilien ito itsimte ivor ixil iximche ixkun
ixlu ixtatan ixtelha ixtutz iyaar izar jabbah jacawitz janus japori jaros jata jenner jerido
jo joule jouret joyanca juhraya kabah kabrel kaelon kagae kaitos kaldra kallas kana kanda
kaneko kanki kano kantare kantunil karemma kataan katerrea kato katsura kaus kavaria kavis
kawguchi kaxuinic kayal kazlati keid kekule kelis kelos kelton kelva kelvin kenda kentanna
kepler kesat kesprytt kessik khand khitomer khorana khosia khwarizmi kiania kianira kiberia
kikuchi kinal kinsey kira kitalpha kiuic klaestron klavdia klendeth ko koch kochab koide
kolandra kolarus koltair komchen konishi kono kora koralis korat koriki korma korridon
korris kostolain kotara kotati kraepelin kraus kressari krios ktaris kuchiki kuki kurhah
kurill kurl kuroda kuroki kyana kylata kyria lacanha lacertae lamarck lamedon landau landris
langwell laplace lappa largo laue lazon lebbenin ledonia ledos lefnui legara lemma leonis
leonis-majoris leonis-minoris leporis lerishi lesath levinius lhun libby librae liebig
ligobis ligon ligos limlight lindon linnaeus lissepia lister lithlad loracus loren lorenz
lorien lossarnach lothlorien loval lupi luria lya lyell lyncis lyrae lysenko lyshan lysia
maasym maaz magus makus malaya malcor maleda malindi malkus malon malpighi malur mankib manu
maranga marcos maret marfik margulis mariah marijne marinda mariposa markab marlonia marva
matalas mataline matar maury mavala maxcanu maxia maxwell mayr mazar mead mebsuta meco
meduseld meezan megrez meissa meitner mekbuda meldrar meles melina melnos mendel mendeleev
menkar mensae merak meridiana methedras michol microscopii midos milika minara minas
mindolluin minhiriath minnobia minos minshara mintaka mirak miri miridian mirrormere mislen
mithren mixco mizar moab modean monac monea monocerotis morannon mordan mordor morgai morgan
morgulduin moria morikin morska morthond mothallah mudd mudor mulchic muluch mundahla
mundburg muneca muphrid murzim muscae naachtun nagai nagor nahmi naith naito nakbe nakum
nanduhirion nanibia napinne narchost nardol naruse nashira nasu nausicaa nekkar nel nelvana
nemtsov nerendra nervala nessik neubilia neumann neural newton nibia nibiru nigala nihal
nikaido nikki nimbus nimrodel nindalf ninipia nishi nishina nishio nitta nivoch norcadia
norellus norkan normae norpin nusakan nushaba nyika nyota nyria oby ocampa oceanus ochi
octantis oda ogat ogus ohniaka okda okop okuda omekla onile onnes ooka ophiuchi orelious
orendal organia orias orion orionis ornara orodruin orthanc oseki osgiliath osumare otani
otar otera ouchi oxkintok oxpemul oxtankah paan pacifica palamar palenque panora paraagan
parada parsion pascal pasteur pauling pavlov pavonis paxsor pechal pegasi pegos pelargir
pelennor peliar pellius pendari pentarus pentath penthara pernaia persei pestac phact phad
pherkad phoenicis piaget pictoris piscis-austrini piscium pixoy planck plato pollux pomuch
porakas poros portas prakal pralor praxis preenos prema priestley ptolemy pullock puppis
pyris pythro pyxidis qualor quarra quatal quazulu quinor quirigua qumarkaj rachelis rakal
rakhar rakosa ramatis ramura rana ranza rastaban rauros regulak reina relva remmii remus
reticuli rhosgobel rhovanion rhudaur rhun rhymus rigel rigilkent rinax ringlo risa risha
rivos rochanie roentgen rokkaku romulus ronara rondac rousseau ruah rubicun rukbah runara
rura rutherford rutia sabacche sabik sacchana sacnicte sacul sadalsuud sadr sagittae
sagittarii saigo saiph saito sakai sakura sakurai salk saltok salva sama sammath sanada
sanger sano sarn sarona sarraqa sarthong sasaki satake sato sauria scalos scheat sculptoris
scuti securus sefalla seki selay selek selenia selye sen sengoku septimis serni seros
serpentis setlik sextantis shanira shantil shaula shedir shelia sheliak sheratan sheva
shinjo shiralea shoni sikaris silvituc simperia simpson sirith sirius sirrah sirrie skat
skinner so sobras soga solais solosos sonoda sothis soukara stameris straleb strauss styris
sulafat sulvin sumiko surata suzuki tagra taguchi tagus taira takalik takar takara takeda
talax talitha talos tamar tanaka tancah tandar tani tania tanuga tarakis tarellia taresia
tarf tarkalea tarlang tarod tarok tarsus tauri taurus tavela techoh teerza telescopii tellar
teller telsius teplan terlina terosa tessen tessik tethys thalos thanatos tharbad thasus
thelka thera tholia thomson thrihyrne thuban thurasia tiburon tikal tilonus timor titus toda
todo togashi tohcok tohvun toki tolfalas topoxte torad torga torii torman torona toroth
torros townes tracken trebus trelkis triacus trialas trianguli trianguli-australis triannon
trill triona troyius tsukushi tsutsui tucanae tunich turkana tyree tyrellia tyrus tzenketh
ucanal udala udun uesugi ufandi uinic uitzina ujie ukita ukum umbar umoth undeeps unefra
ursae-majoris ursae-minoris uxal uxbenka uxmal uxul vacca vadris vagra valo valt vanden
vandor vandros varala vega velara velorum veloz vendikar ventani ventax verez veridian
vesalius vico vilmoran virchow virginis vissia volan volantis volchok volta vulpeculae wadi
waka waksman wasat watson watt wegener wezn wilson wold wundt wysanti xanthras xantoras
xcambo xcaret xculoc xelha xendi xindus xlapak xpuhil xtampak xtobo xul xultun xupa xutilha
yadalla yadera yagyu yalow yaxha yaxuna yed yonada yonezu yoshida yoshii yuki zacpeten
zaculeu zadar zahl zakdorn zalkon zaran zaurac zawiah zayra zeon zetar zibalia zirakzigil
zuvan zytchin
""".split()
)
UI_SUFFIXES = frozenset(
    """
a adjunct anomaly b band boundary c cloud cluster collapse conflux d e expanse f field
fringe g h instability k m manifold mass n nebula p point q quadrant r reach ring sector
shift tensor terminus v vector void warp x y z
""".split()
)
_UI = re.compile(r"^([a-z]+)[0-9]*(?:-(.*))?$")


def is_ui_name(name: str) -> bool:
    """A name the UI's Custom-run form made up (its own generator's words)."""
    m = _UI.match(name)
    if not m or m.group(1) not in UI_GREEK:
        return False
    rest = m.group(2) or ""
    if rest in UI_WORDS or not rest:
        return True
    word, _, suffix = rest.rpartition("-")
    return suffix in UI_SUFFIXES and (word in UI_WORDS or word == "")


@cache
def _coolname_words() -> tuple[frozenset[str], frozenset[str]]:
    """(adjectives, animals) of coolname's two-word slugs (prefect.utilities.names.generate_slug(2))."""
    from pathlib import Path

    import coolname
    from coolname.loader import load_config

    config = load_config(Path(coolname.__file__).parent / "data")

    def words(name: str) -> set[str]:
        entry = config[name]
        if entry["type"] == "words":
            return set(entry["words"])
        if entry["type"] == "nested":
            return set().union(*(words(n) for n in entry["lists"]))
        return set()

    first, second = config[config["2"]["lists"][0]]["lists"]  # "an": adjective x animal
    return frozenset(words(first)), frozenset(words(second))


def is_slug_name(name: str) -> bool:
    """A name Prefect's server or client made up (two coolname words; a word may hold a dash)."""
    try:
        adjectives, animals = _coolname_words()
    except Exception:  # noqa: BLE001 - coolname changed its data layout: fall back to the shape
        return re.fullmatch(r"[a-z]+-[a-z]+", name) is not None
    parts = name.split("-")
    return any(
        "-".join(parts[:i]) in adjectives and "-".join(parts[i:]) in animals
        for i in range(1, len(parts))
    )


def is_generated_name(name: str | None) -> bool:
    """True for a name no person chose: none, Prefect's two words, or the UI form's made-up name."""
    return not name or is_slug_name(name) or is_ui_name(name)
