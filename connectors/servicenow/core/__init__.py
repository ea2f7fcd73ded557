"""The core every front door hands a user's message to, whatever the store:

``core``      builds the parts and runs their life cycle; doors compose one
``router``    a user's message: to the agent while in handoff, else to Rasa
``chats``     which conversations are in handoff: the store's records, the chats held here
``chat``      one live chat, the chats held here, the handoffs opening
``records``   writing handoff records (filed, updated, removed with retries)
``opening``   starting a handoff, and every refusal to
``ending``    every way a handoff ends, and saving an end the tracker store refused
``intake``    what ServiceNow says, pushed or polled: delivered once, in order
``callbacks`` ServiceNow's pushes, placed with their chat and stored before the 200
``polling``   polling Connect chats under a lease, with an adaptive schedule
``timers``    the store's timers: waiting for an agent, "still waiting" notices, idle users
``timeouts``  what a due timer does
``handback``  the bot's turn after a handoff ends
``notices``   saying the channel's texts, recorded and delivered
``typing``    the user's typing state, passed to the agent sparingly
"""
